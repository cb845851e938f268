"""Phone-number masking measured on a table: numbers that are not personal data (dates, versions, prices, ISBNs,
IP addresses, order and serial numbers...) must pass unchanged in every region a policy may name; real phone
numbers in national and international formats must be masked. Precision and recall over the table are printed
(pytest -s) and recall has a floor; the numbers the matcher misses are listed in the table, not left out."""

from __future__ import annotations

import phonenumbers
import pytest

from guardrails.detectors import MASKS, mask_spans, sensitive_spans

ALL = frozenset(MASKS)
REGIONS = ("US", "GB", "CA", "DE", "FR", "NL", "IN", "JP", "AU")  # the non-PII texts pass in each
MIN_RECALL = 0.9  # measured: 0.94 (4 of 67 missed, listed under MISSED)

NOT_PII = [
    "The firmware was released on 2024-03-15.", "Invoices dated 15/03/2024 and 03/15/2024 are due.",
    "The backup ran at 10:30:00 and at 2024-03-15 10:30:00 UTC.", "See section 5.2.1 of the manual.",
    "Upgrade to version 2.0.1 or v1.24.3.", "It costs $1,299.99, or EUR 12.50 a month.",
    "ISBN 978-3-16-148410-0 and ISBN 978-0-306-40615-7.", "The router is at 192.168.1.254 (or 10.0.0.1).",
    "Your Order #4411-2390-77 has shipped.", "The serial is SN 20231105773.", "He worked there 1998-2004.",
    "The office is at 52.3676, 4.9041.", "Coordinates: lat 40.7128, lon -74.0060.", "Efficiency rose by 45.5% to 97%.",
    "Order 12345 weighs 1.7 kg and runs on 230 V.", "The card number 4111 1111 1111 1112 fails its check.",
    "Ticket ID 9994155552671 was closed.", "Tracking number 1Z999AA10123456784.", "Read pages 120-145 tonight.",
    "About 1,000,000 units; pi is 3.14159265358979.", "Request 123e4567-e89b-12d3-a456-426614174000 failed.",
    "Pay to IBAN DE89 3704 0044 0532 0130 00.", "Rated 1,200 to 3,400 W at 50/60 Hz.", "Part no. 2015551234567.",
    "Batch 4155552671000 of 2023.", "Model KX-TG6822 with 2 handsets.", "Temperature range -20 to +60 °C.",
    "Reference 2024/03/15-0042.", "MAC address 00:1B:44:11:3A:B7.", "Room 4.012, building 7, floor 3.",
    "The score was 3-2 after 90+5 minutes.", "Release 2023.11.05 fixed bug #12345678.",
    "A ratio of 16:9 at 1920x1080 pixels.", "Account 00012345678 at sort code 12-34-56.",
    "Call between 9 and 17 h, Monday to Friday.", "EAN 4006381333931 on the box.", "GTIN 00012345600012.",
]
# Masked where they should not be: (text, the regions where it happens, why). Counted in the precision.
KNOWN_FALSE_POSITIVES = [
    ("The older ISBN 0-306-40615-2.", ("DE", "FR", "NL", "AU"), "a valid national number there"),
]

# (text, the region the policy names, the phone numbers in it)
PHONES = [
    ("Call (415) 555-2671 today.", "US", ["(415) 555-2671"]),
    ("Call +1 415-555-2671 today.", "US", ["+1 415-555-2671"]),
    ("Phone: 415.555.2671 or 415-555-2671.", "US", ["415.555.2671", "415-555-2671"]),
    ("Dial +1 (212) 555-0100, or toll free 1-800-555-0199.", "US", ["+1 (212) 555-0100", "1-800-555-0199"]),
    ("Text +14155552671 or (415)555-2671 or 415 555 2671.", "US", ["+14155552671", "(415)555-2671", "415 555 2671"]),
    ("Call 4155552671, 1 (415) 555-2671 or 415/555-2671.", "US", ["4155552671", "1 (415) 555-2671", "415/555-2671"]),
    ("Dial tel:+1-415-555-2671 or +1.415.555.2671.", "US", ["+1-415-555-2671", "+1.415.555.2671"]),
    ("Desk 415-555-2671x123, or (415) 555-2671 ext 99.", "US", ["415-555-2671x123", "(415) 555-2671 ext 99"]),
    ("Toronto (416) 555-0123.", "CA", ["(416) 555-0123"]),
    ("Our London office: +44 20 7946 0958.", "US", ["+44 20 7946 0958"]),
    ("Our London office: 020 7946 0958.", "GB", ["020 7946 0958"]),
    ("Mobile +44 7911 123456 or 07911 123456.", "GB", ["+44 7911 123456", "07911 123456"]),
    ("Switchboard +44 (0)20 7946 0958 or (+44) 20 7946 0958.", "US", ["+44 (0)20 7946 0958", "(+44) 20 7946 0958"]),
    ("From abroad 0044 20 7946 0958.", "GB", ["0044 20 7946 0958"]),
    ("Extension: +44 20 7946 0958 ext. 12.", "US", ["+44 20 7946 0958 ext. 12"]),
    ("Berlin: +49 30 901820.", "US", ["+49 30 901820"]),
    ("Berlin: 030 901820, 030/901820, mobile 0151 23456789.", "DE", ["030 901820", "030/901820", "0151 23456789"]),
    ("Handy +49 1512 3456789 oder +49 (0)30 901820.", "US", ["+49 1512 3456789", "+49 (0)30 901820"]),
    ("Paris : +33 1 42 68 53 00 ou +33.1.42.68.53.00.", "US", ["+33 1 42 68 53 00", "+33.1.42.68.53.00"]),
    ("Paris : 01 42 68 53 00 ou +33 6 12 34 56 78.", "FR", ["01 42 68 53 00", "+33 6 12 34 56 78"]),
    ("Support India +91 98765 43210 or +91-9876543210.", "US", ["+91 98765 43210", "+91-9876543210"]),
    ("Mumbai office +91 22 2345 6789.", "IN", ["+91 22 2345 6789"]),
    ("Tokyo +81 3-1234-5678.", "US", ["+81 3-1234-5678"]),
    ("Tokyo 03-1234-5678, mobile 090-1234-5678.", "JP", ["03-1234-5678", "090-1234-5678"]),
    ("Sydney +61 2 9374 4000 or +61 (0)2 9374 4000.", "US", ["+61 2 9374 4000", "+61 (0)2 9374 4000"]),
    ("Sydney (02) 9374 4000, mobile 0412 345 678.", "AU", ["(02) 9374 4000", "0412 345 678"]),
    ("Amsterdam +31 20 555 0199, Utrecht (030) 123 4567.", "NL", ["+31 20 555 0199", "(030) 123 4567"]),
    ("Madrid +34 912 345 678, Rome +39 06 6982 1234.", "US", ["+34 912 345 678", "+39 06 6982 1234"]),
    ("São Paulo +55 11 91234-5678, Beijing +86 138 0013 8000.", "US", ["+55 11 91234-5678", "+86 138 0013 8000"]),
    ("Cape Town +27 21 123 4567, Moscow +7 495 123-45-67.", "US", ["+27 21 123 4567", "+7 495 123-45-67"]),
    ("Seoul +82 2-312-3456, Mexico City +52 55 1234 5678.", "US", ["+82 2-312-3456", "+52 55 1234 5678"]),
    ("Dublin +353 1 234 5678, Singapore +65 6123 4567.", "US", ["+353 1 234 5678", "+65 6123 4567"]),
    ("Zurich +41 44 668 18 00, Stockholm +46 8 123 456 78.", "US", ["+41 44 668 18 00", "+46 8 123 456 78"]),
    ("Warsaw +48 22 123 45 67, Lagos +234 803 123 4567, Dubai +971 4 312 3456.", "US",
     ["+48 22 123 45 67", "+234 803 123 4567", "+971 4 312 3456"]),
    ("Write to jane@example.com or call (415) 555-2671.", "US", ["(415) 555-2671"]),
]
# Real numbers that are not found; they count against the recall. (text, region named, numbers, their region)
MISSED = [
    ("Our London office: 020 7946 0958.", "US", ["020 7946 0958"], "GB"),  # national form, region not named
    ("Ring call415-555-2671 now.", "US", ["415-555-2671"], "US"),  # glued to a word
    ("Call +44 20\n7946 0958 now.", "US", ["+44 20\n7946 0958"], "GB"),  # broken across lines
    ("Call 1-800-FLOWERS now.", "US", ["1-800-FLOWERS"], "US"),  # letters for digits
]


def phones_masked(text: str, region: str) -> list[str]:
    return [text[s.start:s.end] for s in sensitive_spans(text, ALL, (region,)) if s.kind == "phone"]


@pytest.mark.parametrize("text, region, numbers", PHONES + [(text, home, numbers) for text, _, numbers, home in MISSED])
def test_the_table_holds_valid_phone_numbers(text, region, numbers):
    for number in numbers:
        assert number in text
        assert phonenumbers.is_valid_number(phonenumbers.parse(" ".join(number.split()), region)), number


@pytest.mark.parametrize("region", REGIONS)
def test_numbers_that_are_not_personal_data_pass_unchanged(region):
    changed = {text: masked for text in NOT_PII if (masked := mask_spans(text, sensitive_spans(text, ALL, (region,))))
               != text}
    assert changed == {}


@pytest.mark.parametrize("text, region, numbers", PHONES)
def test_phone_numbers_are_masked(text, region, numbers):
    assert phones_masked(text, region) == numbers


def test_precision_and_recall_over_the_table():
    found = missed = false = 0
    for text, region, numbers in PHONES + [entry[:3] for entry in MISSED]:
        masked = phones_masked(text, region)
        found += len(set(masked) & set(numbers))
        missed += len(set(numbers) - set(masked))
        false += len(set(masked) - set(numbers))
    for text in NOT_PII + [text for text, _, _ in KNOWN_FALSE_POSITIVES]:
        false += sum(len(phones_masked(text, region)) for region in REGIONS)
    precision, recall = found / (found + false), found / (found + missed)
    print(f"\nphone masking: precision {precision:.3f} ({found} of {found + false} masks right), recall {recall:.3f} "
          f"({found} of {found + missed} numbers); {len(NOT_PII) + len(KNOWN_FALSE_POSITIVES)} other texts x "
          f"{len(REGIONS)} regions")
    assert recall >= MIN_RECALL
    assert false == sum(len(regions) for _, regions, _ in KNOWN_FALSE_POSITIVES)


@pytest.mark.parametrize("text, regions, why", KNOWN_FALSE_POSITIVES)
def test_known_false_positives_are_still_there(text, regions, why):
    """When one of these stops happening, move it to NOT_PII."""
    assert [r for r in REGIONS if phones_masked(text, r)] == list(regions), why


@pytest.mark.xfail(strict=True, reason="13 to 19 digits that pass the Luhn check are masked as a card number: "
                                       "about one ISBN-13 in ten (this one is Wikipedia's example)")
def test_a_luhn_valid_isbn_is_not_a_card_number():
    text = "ISBN 978-1-4028-9462-6"
    assert mask_spans(text, sensitive_spans(text, ALL)) == text

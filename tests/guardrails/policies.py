"""A small valid policy the guardrails tests share: a nimrag rail and a Colang flow of its own."""

CONFIG = """\
# Answers questions about the manuals.
instructions:
  - type: general
    content: You answer questions about the manuals.
rails:
  input:
    flows:
      - nimrag check jailbreak
      - refuse secrets
"""
COLANG = """\
define bot refuse secrets
  "I can't share secrets."

define subflow refuse secrets
  $secret = False
  if $secret
    bot refuse secrets
    stop
"""

# YAML that PyYAML alone cannot be trusted with: each must be refused as a policy problem, quickly.
DEEP_FLOW_YAML = "deep: " + "[" * 100_000 + "\n"  # the composer recurses once per level: a RecursionError
DEEP_BLOCK_YAML = "".join(f"{' ' * i}l{i}:\n" for i in range(650)) + " " * 650 + "end: true\n"  # under 256 KiB
BILLION_LAUGHS = 'lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))  # 10**9 nodes once expanded
SELF_CONTAINED_YAML = "loop: &loop [1, *loop]\n"

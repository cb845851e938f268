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

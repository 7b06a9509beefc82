"""One-time passwords sent by SMS (SPEC.md §6): the logic behind `OtpService`.

Why a package of its own: an OTP is an SMS with a secret inside, and the secret changes every
rule the SMS path takes for granted. The code comes from the CSPRNG and is stored only as
`hash_secret(pepper, code)`; the message's `body` (what history, exports, search and `sms.*`
webhooks show) holds the text with the code masked, and only `sealed_body` — encrypted, bound
to the message id, cleared at the final status — holds the real text for the phone. Nothing
else ever sees the code: not a response, a log line, nor an outbox event.

- `rules`        — SendOtp's fields checked (pure): length, expiry, template, the text's size.
- `issuing`      — the one transaction that queues the SMS (through `sending.intake`, so device
                   availability, test keys and estimates are those of SendSms) and stores the
                   `otps` row, under the per-number hourly limit.
- `verification` — one attempt: consumed and read in a single UPDATE … RETURNING, compared
                   in constant time; `otp.verified` written in the same transaction.

All functions are synchronous (run them through `ServerState.db_call`).
"""

from .issuing import IssuedOtp, issue
from .rules import OtpPlan, check_send
from .verification import Verdict, verify

__all__ = ["IssuedOtp", "OtpPlan", "Verdict", "check_send", "issue", "verify"]

"""Which targeted platform cannot honour a message's options, decided at accept (a 400 saying why).

The vendor-independent combinations (nothing visible on a silent push, renotify
without a group, ...) are refused while parsing (:func:`shared.message_options.conflicts`);
what is here depends on the platforms a send reaches and on the app's settings.
"""

from __future__ import annotations

from collections.abc import Sequence

from shared.message import Message
from shared.message_options import Options
from shared.vendor_payloads import ANDROID, IOS, VENDORS, WEB, Refusal

OVERRIDE_PLATFORMS = {"apns": IOS, "fcm": ANDROID, "webpush": WEB}
CRITICAL_NEEDS_ENTITLEMENT = (
    "interruption_level critical needs Apple's critical-alerts entitlement, and this app is not configured for it "
    "(once Apple granted it: `pushq apps set-critical-alerts APP_ID on`)"
)


def needs_critical_entitlement(options: Options, platforms: Sequence[str]) -> bool:
    """Whether accepting these options needs the app's critical-alerts setting (a critical alert to iOS)."""
    return options.interruption_level == "critical" and IOS in platforms


def option_refusals(message: Message, platforms: Sequence[str], *, critical_allowed: bool) -> list[Refusal]:
    """For each targeted platform that cannot carry ``message``'s options as asked: why not.

    * A silent push cannot reach a browser (browsers show a notification for every
      push): refused when Web Push is the only target. With other targets too, the
      browsers' deliveries end ``rejected`` without being pushed (the documented rule).
    * ``critical`` to iOS needs the app's ``apns_critical_alerts`` setting.
    * An override for a vendor the send does not reach would be dropped: refused.
    """
    options = message.options
    found = []
    if options.silent and tuple(platforms) == (WEB,):
        found.append(Refusal(WEB, "a silent push cannot reach a browser: browsers show a notification for every push"))
    if needs_critical_entitlement(options, platforms) and not critical_allowed:
        found.append(Refusal(IOS, CRITICAL_NEEDS_ENTITLEMENT))
    for vendor, platform in OVERRIDE_PLATFORMS.items():
        if getattr(options, vendor) and platform not in platforms:
            found.append(Refusal(platform, f"`{vendor}` overrides given, but this send does not reach "
                                           f"{VENDORS[platform]} (it reaches {', '.join(platforms)})"))
    return found

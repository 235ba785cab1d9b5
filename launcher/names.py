"""Rules for secret names, set names and values (SPEC §2.3).

Reserved names live here too: the platform credentials, which only the platform layer may
provide, and the `AGENT_RUN_` prefix, which belongs to the launcher.
"""

from __future__ import annotations

PLATFORM_CREDENTIALS: tuple[str, ...] = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
RESERVED_PREFIX = "AGENT_RUN_"

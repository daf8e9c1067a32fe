"""Browser, OS and device type from the User-Agent (ua-parser, cached), and bot detection
(the maintained crawler-user-agents list, ua-parser's spider family, headless browsers)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import crawleruseragents
from ua_parser import parse

# Not Electron: desktop apps (Slack, Teams, ...) open pages with it for real people.
_HEADLESS = re.compile(r"headless|phantomjs|puppeteer|playwright|selenium|webdriver", re.I)
_TABLET = re.compile(r"ipad|tablet|kindle|silk|playbook", re.I)


@dataclass(frozen=True)
class Agent:
    browser: str = ""
    browser_version: str = ""
    os: str = ""
    os_version: str = ""
    device: str = ""  # desktop | mobile | tablet
    bot: bool = False


def _version(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def _device(ua: str, os_family: str, device_family: str) -> str:
    if _TABLET.search(ua) or "iPad" in device_family:
        return "tablet"
    if os_family == "Android" and "Mobile" not in ua:
        return "tablet"  # Android phones say "Mobile"; tablets do not
    if os_family in ("iOS", "Android", "Windows Phone", "KaiOS") or "Mobile" in ua:
        return "mobile"
    return "desktop"


@lru_cache(maxsize=20_000)
def parse_agent(ua: str) -> Agent:
    if not ua.strip():
        return Agent(bot=True)  # browsers always send one
    result = parse(ua)
    agent, os, device = result.user_agent, result.os, result.device
    bot = (
        (device is not None and device.family == "Spider")
        or bool(_HEADLESS.search(ua))
        or crawleruseragents.is_crawler(ua)
    )
    if bot:
        return Agent(bot=True)
    return Agent(
        browser=agent.family if agent else "",
        browser_version=_version(agent.major, agent.minor) if agent else "",
        os=os.family if os else "",
        os_version=_version(os.major, os.minor) if os else "",
        device=_device(ua, os.family if os else "", device.family if device else ""),
    )

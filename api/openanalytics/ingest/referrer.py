"""Where a visit came from: the referrer's host mapped to a known name, self-referrals ignored."""

from __future__ import annotations

import re
from functools import lru_cache

from openanalytics.ingest.urls import split_url

# Engines with a domain per country (google.ch, google.co.uk, google.com.mx, yandex.kz, ...), the
# search hosts themselves only (www. is stripped first): not sites.google.com, google.org, yandex.net.
_COUNTRY_DOMAINS = re.compile(r"^(google|yandex)\.(?:com|(?:com?\.)?[a-z]{2})$")
_COUNTRY_NAMES = {"google": "Google", "yandex": "Yandex"}
# Hosts (and their subdomains) of search engines and social sites, by the name they report as.
KNOWN: dict[str, tuple[str, ...]] = {
    "Bing": ("bing.com",),
    "DuckDuckGo": ("duckduckgo.com",),
    "Yahoo": ("search.yahoo.com", "yahoo.com"),
    "Baidu": ("baidu.com",),
    "Ecosia": ("ecosia.org",),
    "Brave Search": ("search.brave.com",),
    "Qwant": ("qwant.com",),
    "Startpage": ("startpage.com",),
    "Naver": ("naver.com",),
    "Facebook": ("facebook.com", "fb.com", "l.facebook.com", "m.facebook.com"),
    "Instagram": ("instagram.com", "l.instagram.com"),
    "Twitter": ("twitter.com", "t.co", "x.com"),
    "LinkedIn": ("linkedin.com", "lnkd.in"),
    "Reddit": ("reddit.com", "old.reddit.com"),
    "YouTube": ("youtube.com", "youtu.be"),
    "Pinterest": ("pinterest.com",),
    "TikTok": ("tiktok.com",),
    "Hacker News": ("news.ycombinator.com",),
    "GitHub": ("github.com",),
    "Mastodon": ("mastodon.social",),
    "Bluesky": ("bsky.app",),
    "Threads": ("threads.net",),
    "WhatsApp": ("whatsapp.com", "web.whatsapp.com"),
    "Telegram": ("t.me", "telegram.org"),
    "ChatGPT": ("chatgpt.com", "chat.openai.com"),
    "Perplexity": ("perplexity.ai",),
}
_BY_HOST = {host: name for name, hosts in KNOWN.items() for host in hosts}


def _strip_www(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


@lru_cache(maxsize=4096)
def source_for(referrer: str | None, page_host: str) -> tuple[str, str]:
    """(referrer to keep, source name). Self-referrals give ("", ""); unknown hosts are their own name."""
    if not referrer:
        return "", ""
    try:
        host = (split_url(referrer).hostname or "").lower()
    except ValueError:  # e.g. "http://[x": no source to name, and no reason to lose the hit
        return "", ""
    if not host:
        return "", ""
    host = _strip_www(host)
    if host == _strip_www(page_host):
        return "", ""
    engine = _COUNTRY_DOMAINS.search(host)
    if engine:
        return referrer, _COUNTRY_NAMES[engine.group(1)]
    labels = host.split(".")
    for i in range(len(labels) - 1):
        name = _BY_HOST.get(".".join(labels[i:]))
        if name:
            return referrer, name
    return referrer, host

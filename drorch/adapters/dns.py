"""Real DNS queries with dnspython against named (authoritative) servers."""

from __future__ import annotations

import dns.exception
import dns.rdatatype
import dns.resolver


def resolver_for(nameserver: str, timeout_s: float = 1.0) -> dns.resolver.Resolver:
    host, _, port = nameserver.rpartition(":") if ":" in nameserver else (nameserver, "", "53")
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [host]
    res.port = int(port)
    res.timeout = timeout_s
    res.lifetime = timeout_s
    res.cache = None
    return res


def answers(nameserver: str, name: str, rtype: str = "A") -> tuple[set[str], int | None]:
    """The values and TTL ``nameserver`` gives for ``name`` now (empty on NXDOMAIN/timeout)."""
    try:
        ans = resolver_for(nameserver).resolve(name, rtype, raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers, dns.exception.Timeout):
        return set(), None
    if ans.rrset is None:
        return set(), None
    return {r.to_text() for r in ans.rrset}, ans.rrset.ttl

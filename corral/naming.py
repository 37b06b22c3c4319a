"""Private DNS names. Until accounts get networks of their own (VPCs), every account's guests
share one network and one dnsmasq, so names are qualified by account: ``NAME.ACCOUNT.DOMAIN``,
and each guest gets ``ACCOUNT.DOMAIN`` as its DHCP domain (its search domain), so a bare
``NAME`` means an instance of the asker's own account. Two accounts may use the same name;
neither's lookups reach the other's guest. ``INSTANCE-ID.DOMAIN`` stays (ids are unique)."""

from __future__ import annotations


def account_zone(account_id: str, domain: str) -> str:
    return f"{account_id}.{domain}"


def private_dns_name(name: str, account_id: str, domain: str) -> str:
    return f"{name}.{account_zone(account_id, domain)}"

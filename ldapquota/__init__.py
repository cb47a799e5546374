"""ldapquota: measure maildirs, keep isOverQuota in LDAP for RCPT-time refusals."""

__version__ = "0.1.0"

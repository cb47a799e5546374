"""The LDAP flag store: the only package that imports ldap3.

``syntax`` checks and escapes LDAP text, ``results`` translates ldap3's exceptions and
LDAP result codes into :mod:`ldapquota.errors` (the one place that does), ``connection``
opens a verified, bound connection, and ``store`` is the :class:`~ldapquota.flagstore.FlagStore`
the rest of the program talks to.
"""

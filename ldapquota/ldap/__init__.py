"""The LDAP flag store: the only package that imports ldap3 (and python-ldap).

``syntax`` checks and escapes LDAP text, ``results`` translates ldap3's and python-ldap's
exceptions and LDAP result codes into :mod:`ldapquota.errors` (the one place that does),
``connection`` opens a verified, bound connection, ``store`` is the
:class:`~ldapquota.flagstore.FlagStore` the rest of the program talks to, ``pipeline``
keeps many of its writes in flight, and ``fastread`` reads its accounts with python-ldap
when ``ldap.reader`` says so.
"""

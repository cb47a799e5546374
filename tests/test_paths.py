"""The mailbox path template and the "stay under mailboxes.root" rule (docs/contract.md §4)."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ldapquota.paths import PathTemplate, is_under, lexically_under_root, strip_mail_location

# --------------------------------------------------------------------------- parse


@pytest.mark.parametrize(
    "text",
    [
        "{domain}/{localpart}/Maildir",
        "{address}",
        "{localpart:lower}",
        "{domain:lower}/{localpart:lower}/Maildir",
        "{attr:uid}/Maildir",
        "{attr:mailHost:lower}/{attr:uid}",
        "{attr:mail-Host;lang-en}/x",
        "static/path/Maildir",
    ],
)
def test_parse_accepts(text):
    assert PathTemplate.parse(text).text == text


@pytest.mark.parametrize(
    "text",
    [
        "{user}/Maildir",  # unknown placeholder
        "{Localpart}",  # placeholders are lower case
        "{localpart:upper}",
        "{localpart:lower:lower}",
        "{lower}",
        "{}",
        "{attr:}",
        "{attr}",
        "{attr:1uid}",
        "{attr:u id}",
        "{attr:uid:extra}",
        "{ATTR:uid}",
        "{domain",
        "domain}",
        "{domain}}",
        "{{domain}",
        "a{{localpart}}",
        "{domain}/{local{part}",
    ],
)
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        PathTemplate.parse(text)


def test_attributes_lists_the_attr_placeholders_in_order():
    template = PathTemplate.parse("{attr:mailHost:lower}/{domain}/{attr:uid}")
    assert template.attributes == ("mailHost", "uid")
    assert PathTemplate.parse("{domain}/{localpart}").attributes == ()


def test_needs_address():
    assert PathTemplate.parse("{domain}/{localpart}").needs_address
    assert PathTemplate.parse("x/{address}").needs_address
    assert not PathTemplate.parse("{attr:uid}/Maildir").needs_address
    assert not PathTemplate.parse("fixed").needs_address


# --------------------------------------------------------------------------- render


def test_render_localpart_domain():
    assert PathTemplate.parse("{domain}/{localpart}/Maildir").render("bob@example.org", {}) == "example.org/bob/Maildir"


def test_render_address():
    assert PathTemplate.parse("users/{address}").render("bob@example.org", {}) == "users/bob@example.org"


def test_render_keeps_case_unless_told():
    template = PathTemplate.parse("{domain}/{localpart}")
    assert template.render("Bob.Smith@Example.ORG", {}) == "Example.ORG/Bob.Smith"


def test_render_lower():
    template = PathTemplate.parse("{domain:lower}/{localpart:lower}/{address}")
    assert template.render("Bob@Example.ORG", {}) == "example.org/bob/Bob@Example.ORG"


def test_render_attr_case_insensitive_name_and_first_value():
    template = PathTemplate.parse("{attr:mailHost}/{attr:UID:lower}")
    attributes = {"mailhost": ["store1"], "uid": ["Bob", "other"]}
    assert template.render(None, attributes) == "store1/bob"
    assert template.render(None, {"MAILHOST": ["s2"], "Uid": ["x"]}) == "s2/x"


def test_render_last_at_sign_splits():
    # RFC 5321 allows a quoted "@" in the local part; the domain follows the last one.
    assert PathTemplate.parse("{domain}/{localpart}").render('"a@b"@example.org', {}) == 'example.org/"a@b"'


@pytest.mark.parametrize("address", ["bob", "@example.org", "bob@", "", None])
def test_render_refuses_address_without_localpart_and_domain(address):
    with pytest.raises(ValueError):
        PathTemplate.parse("{domain}/{localpart}").render(address, {})


@pytest.mark.parametrize("address", ["", None])
def test_render_refuses_missing_address_for_address_placeholder(address):
    with pytest.raises(ValueError):
        PathTemplate.parse("{address}").render(address, {})


@pytest.mark.parametrize(
    "address",
    ["../x@example.org", "..@example.org", ".@example.org", "a/b@example.org", "bob@..", "bob@.", "bob@a/b", "a\0b@example.org", "bob@exa\0mple"],
)
def test_render_refuses_values_that_leave_their_component(address):
    with pytest.raises(ValueError):
        PathTemplate.parse("{domain}/{localpart}/Maildir").render(address, {})


@pytest.mark.parametrize("value", ["..", ".", "a/b", "/", "x\0", ""])
def test_render_refuses_bad_attribute_values(value):
    with pytest.raises(ValueError):
        PathTemplate.parse("{attr:uid}/Maildir").render(None, {"uid": [value]})


def test_render_refuses_address_placeholder_with_slash():
    with pytest.raises(ValueError):
        PathTemplate.parse("{address}").render("a/b@example.org", {})


@pytest.mark.parametrize("attributes", [{}, {"uid": []}])
def test_render_refuses_missing_attribute(attributes):
    with pytest.raises(ValueError):
        PathTemplate.parse("{attr:uid}").render("bob@example.org", attributes)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.text(max_size=12))
def test_property_rendered_paths_never_escape_their_components(localpart, domain):
    template = PathTemplate.parse("{domain}/{localpart}/Maildir")
    try:
        rendered = template.render(f"{localpart}@{domain}", {})
    except ValueError:
        return
    parts = rendered.split("/")
    assert len(parts) == 3 and parts[2] == "Maildir"
    assert all(part not in ("", ".", "..") and "\0" not in part for part in parts)
    root = "/var/vmail"
    assert lexically_under_root(root, rendered) == root + "/" + rendered


# --------------------------------------------------------------------------- under the root


ROOT = "/var/vmail"


@pytest.mark.parametrize(
    "path",
    ["../..", "..", "../etc", "a/../../etc", "/etc/passwd", "/var", "/var/vmail2/x", "/var/vmailx", "", ".", "./", "a/..", "/var/vmail", "//etc", "//var/vmail/x"],
)
def test_lexically_under_root_refuses(path):
    with pytest.raises(ValueError):
        lexically_under_root(ROOT, path)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("example.org/bob/Maildir", "/var/vmail/example.org/bob/Maildir"),
        ("/var/vmail/example.org/bob", "/var/vmail/example.org/bob"),
        ("a/./b", "/var/vmail/a/b"),
        ("a/../b", "/var/vmail/b"),
        ("x/", "/var/vmail/x"),
        ("..x", "/var/vmail/..x"),
    ],
)
def test_lexically_under_root_accepts(path, expected):
    assert lexically_under_root(ROOT, path) == expected


def test_is_under():
    assert is_under("/var/vmail", "/var/vmail/a")
    assert not is_under("/var/vmail", "/var/vmail")
    assert not is_under("/var/vmail", "/var/vmailx/a")
    assert not is_under("/var/vmail", "/var")
    assert is_under("/", "/a")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "vmail", "var"]), max_size=8), st.booleans())
def test_property_lexically_under_root_result_is_strictly_below_root(parts, absolute):
    path = ("/" if absolute else "") + "/".join(parts)
    try:
        result = lexically_under_root(ROOT, path)
    except ValueError:
        return
    assert result.startswith(ROOT + "/")
    assert ".." not in result.split("/") and "." not in result.split("/")
    assert result == os.path.normpath(result)


# --------------------------------------------------------------------------- mail_location


@pytest.mark.parametrize(
    "value, expected",
    [
        ("maildir:/x/y:INDEX=/z", "/x/y"),
        ("maildir:/x/y", "/x/y"),
        ("maildir:/x/y:INDEX=/z:CONTROL=/c", "/x/y"),
        ("/x/y", "/x/y"),
        ("example.org/bob/Maildir", "example.org/bob/Maildir"),
    ],
)
def test_strip_mail_location(value, expected):
    assert strip_mail_location(value) == expected

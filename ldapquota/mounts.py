"""Which file systems report every change to inotify (local ones), read from
/proc/self/mountinfo by device number.

inotify sees only changes made through this kernel: on NFS, CIFS, a cluster or FUSE file
system another host (or the FUSE server) changes files unseen. The daemon trusts
notifications alone for a mailbox only on a file system known to be local; anything it
cannot place (a device missing from mountinfo, an unreadable mountinfo) counts as not.
"""

import os
from typing import Dict, Optional

MOUNTINFO = "/proc/self/mountinfo"

#: File systems where changes can happen without this kernel seeing them. FUSE types
#: ("fuse", "fuse.sshfs", "fuseblk"...) are matched by prefix.
REMOTE_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "coda", "afs", "9p", "ceph", "glusterfs", "lustre",
    "gpfs", "ocfs2", "gfs2", "beegfs", "orangefs", "virtiofs", "davfs", "sshfs",
})


def parse_mountinfo(text: str) -> Dict[int, str]:
    """Device number → file system type, from mountinfo's lines
    ("36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue")."""
    types: Dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split()
        try:
            major, minor = fields[2].split(":")
            fstype = fields[fields.index("-", 6) + 1]
            types[os.makedev(int(major), int(minor))] = fstype
        except (IndexError, ValueError):
            continue  # a line we cannot read tells nothing
    return types


def is_remote(fstype: str) -> bool:
    return fstype in REMOTE_TYPES or fstype.startswith("fuse")


class LocalFileSystems:
    """Answers "is this device a local file system?", re-reading mountinfo once when a
    device it has not seen turns up (a file system mounted since). A device mountinfo
    does not name (a btrfs subvolume, say) is remembered as unknown, so asking about it
    again (every over_recheck, for each such mailbox) does not read the file again."""

    def __init__(self, mountinfo: str = MOUNTINFO):
        self.mountinfo = mountinfo
        self._types: Optional[Dict[int, Optional[str]]] = None

    def is_local(self, device: int) -> bool:
        types = self._types
        if types is None or device not in types:
            types = self._types = dict(self._read())
            types.setdefault(device, None)
        fstype = types[device]
        return fstype is not None and not is_remote(fstype)

    def _read(self) -> Dict[int, str]:
        try:
            with open(self.mountinfo) as handle:
                return parse_mountinfo(handle.read())
        except OSError:
            return {}

"""Which file systems inotify sees every change on (ldapquota/mounts.py)."""

import os

from ldapquota.mounts import LocalFileSystems, is_remote, parse_mountinfo

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /dev/shm rw,nosuid,nodev shared:2 - tmpfs tmpfs rw
40 22 0:45 / /var/vmail rw,relatime shared:20 - nfs4 store:/vmail rw,vers=4.2
41 22 0:46 / /mnt/ssh rw,nosuid shared:21 - fuse.sshfs user@host:/ rw
42 22 0:47 / /mnt/opt rw shared:22 master:3 - xfs /dev/sdb1 rw
garbage line
"""


def test_mountinfo_lines_give_each_device_its_type_and_odd_lines_are_skipped():
    types = parse_mountinfo(MOUNTINFO)
    assert types == {os.makedev(8, 1): "ext4", os.makedev(0, 21): "tmpfs", os.makedev(0, 45): "nfs4",
                     os.makedev(0, 46): "fuse.sshfs", os.makedev(0, 47): "xfs"}


def test_network_cluster_and_fuse_file_systems_are_remote():
    assert all(is_remote(t) for t in ("nfs", "nfs4", "cifs", "ceph", "gfs2", "fuse", "fuse.sshfs", "fuseblk"))
    assert not any(is_remote(t) for t in ("ext4", "xfs", "btrfs", "tmpfs", "zfs"))


def test_only_a_known_local_device_is_local_and_a_new_one_makes_it_read_again(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    local = LocalFileSystems(str(info))
    assert local.is_local(os.makedev(8, 1)) and local.is_local(os.makedev(0, 21))
    assert not local.is_local(os.makedev(0, 45))  # NFS
    assert not local.is_local(os.makedev(0, 46))  # FUSE
    assert not local.is_local(os.makedev(9, 9))  # unknown: not vouched for
    info.unlink()  # an unknown device asked about again is not looked up again
    assert not local.is_local(os.makedev(9, 9)) and local.is_local(os.makedev(8, 1))
    info.write_text(MOUNTINFO + "43 22 7:7 / /srv rw - ext4 /dev/md0 rw\n")  # mounted since
    assert local.is_local(os.makedev(7, 7))
    assert not LocalFileSystems(str(tmp_path / "missing")).is_local(os.makedev(8, 1))


def test_this_machines_temporary_directory_is_placed(tmp_path):
    """The real /proc/self/mountinfo names the device tmp_path is on (an oracle: stat)."""
    device = os.stat(tmp_path).st_dev
    with open("/proc/self/mountinfo") as handle:
        assert device in parse_mountinfo(handle.read())

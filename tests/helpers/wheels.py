"""Tiny installable wheels made with zipfile, for the offline installer tests (no network)."""

import base64
import hashlib
import os
import zipfile


def make_wheel(folder, name, version, files, requires=()):
    """A real pure-Python wheel ``name==version`` in ``folder`` holding ``files`` {path: text}
    (plus its dist-info: METADATA with ``requires``, WHEEL, RECORD); returns its path."""
    dist = f"{name.replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = os.path.join(str(folder), f"{dist}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
    return path

"""Debian packages fetched and unpacked into a cache, without touching the system."""

from __future__ import annotations

from collections.abc import Sequence
import glob
import os
import subprocess
import tempfile


def fetch_packages(
    packages: Sequence[str],
    *,
    cache_dir: str | os.PathLike[str],
) -> dict[str, tuple[str, str]]:
  """Downloads Debian packages and unpacks each into the cache, once.

  Runs ``apt-get download`` (no root needed; nothing is installed) in
  ``cache_dir/debs`` for the packages whose ``.deb`` is not there yet,
  then ``dpkg-deb -x`` of each into ``cache_dir/extracted/<package>``
  (into a temporary directory renamed into place, so an extraction is
  complete or absent).

  Args:
    packages: Debian package names.
    cache_dir: where the packages are downloaded and extracted.

  Returns:
    ``{package: (version, extracted root directory)}``, sorted by package.

  Raises:
    RuntimeError: when ``apt-get download`` fails or leaves a package out.
  """
  cache_dir = os.fspath(cache_dir)
  debs_dir = os.path.join(cache_dir, 'debs')
  os.makedirs(debs_dir, exist_ok=True)

  def deb_of(package: str) -> str | None:
    found = sorted(glob.glob(os.path.join(debs_dir, f'{package}_*.deb')))
    return found[-1] if found else None

  missing = [p for p in packages if deb_of(p) is None]
  if missing:
    proc = subprocess.run(
        ['apt-get', 'download', *missing], cwd=debs_dir, capture_output=True,
        text=True, check=False)
    if proc.returncode != 0:
      raise RuntimeError(
          f'apt-get download failed for packages {missing}: {proc.stderr.strip()}')
  fetched = {}
  for package in sorted(set(packages)):
    deb = deb_of(package)
    if deb is None:
      raise RuntimeError(f'packages: {package!r} was not downloaded into {debs_dir}')
    version = subprocess.run(
        ['dpkg-deb', '-f', deb, 'Version'], capture_output=True, text=True,
        check=True).stdout.strip()
    root = os.path.join(cache_dir, 'extracted', package)
    if not os.path.isdir(root):
      tmp = tempfile.mkdtemp(dir=cache_dir, prefix='.extract-')
      subprocess.run(['dpkg-deb', '-x', deb, tmp], check=True)
      os.makedirs(os.path.dirname(root), exist_ok=True)
      os.replace(tmp, root)
    fetched[package] = (version, root)
  return fetched

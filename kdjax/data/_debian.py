"""Debian packages fetched and unpacked into a cache directory, never installed.

``apt-get download`` fetches a ``.deb`` (no root needed) and ``dpkg-deb -x``
unpacks it into ``cache_dir/extracted/<package>``; nothing touches the
system's package database. Packages outside the system's configured
components (contrib, non-free) come through a private apt state: a sources
list, package lists and an archive cache of our own, all under
``cache_dir/apt``, passed to apt with ``-o Dir::...`` options
(:func:`private_apt_options`). :func:`fetch_packages` does both steps for
the gettext catalogs, the speech tools and the font packages.
"""

from __future__ import annotations

from collections.abc import Sequence
import glob
import os
import re
import shutil
import subprocess
import tempfile

DEFAULT_MIRROR = 'http://deb.debian.org/debian'
DEFAULT_COMPONENTS = ('main', 'contrib', 'non-free')


class AptError(RuntimeError):
  """apt could not reach or find the packages (no network, no mirror, a wrong name)."""


def _run_apt(command: Sequence[str], *, cwd: str | None = None, what: str) -> str:
  if shutil.which(command[0]) is None:
    raise AptError(f'{what}: `{command[0]}` is not on PATH; this needs a Debian-based system')
  proc = subprocess.run(list(command), cwd=cwd, capture_output=True, text=True, check=False)
  errors = [line for line in proc.stderr.splitlines() if line.startswith(('E:', 'Err:'))]
  failed_fetch = any(line.startswith('W: Failed to fetch') for line in proc.stderr.splitlines())
  if proc.returncode != 0 or errors or failed_fetch:
    raise AptError(
        f'{what} failed (exit {proc.returncode}): {" ".join(command)}\n{proc.stderr.strip()}\n'
        'Check the network and the mirror (apt must reach it), or fill the cache directory '
        'from a machine that can.')
  return proc.stdout


def system_suite() -> str:
  """The running Debian's codename (``bookworm``), from ``/etc/os-release``."""
  try:
    with open('/etc/os-release', encoding='utf-8') as f:
      fields = dict(line.rstrip('\n').split('=', 1) for line in f if '=' in line)
  except OSError as e:
    raise AptError(f'no /etc/os-release ({e}); pass suite= explicitly') from e
  suite = fields.get('VERSION_CODENAME', '').strip('"')
  if not suite:
    raise AptError('/etc/os-release has no VERSION_CODENAME; pass suite= explicitly')
  return suite


def private_apt_options(
    cache_dir: str | os.PathLike[str],
    *,
    suite: str | None = None,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    mirror: str = DEFAULT_MIRROR,
    update: bool = True,
    retries: int = 3,
) -> list[str]:
  """apt ``-o`` options for a private sources list and state, updated once.

  Writes ``cache_dir/apt/sources.list`` (``deb <mirror> <suite>
  <components>``) and runs ``apt-get update`` into ``cache_dir/apt/lists``
  with English long descriptions (``Acquire::Languages=en``), unless a
  previous update of the same sources list completed (a marker file).

  Args:
    cache_dir: the package cache.
    suite: the Debian codename; the running system's when None.
    components: the archive components.
    mirror: the Debian mirror.
    update: run ``apt-get update`` when the lists are missing.
    retries: apt's retries of a failed download (``Acquire::Retries``).

  Returns:
    The options to put after ``apt-get`` / ``apt-cache``.

  Raises:
    AptError: apt is missing or the update failed.
  """
  root = os.path.join(os.path.abspath(os.fspath(cache_dir)), 'apt')
  lists = os.path.join(root, 'lists')
  parts = os.path.join(root, 'sources.list.d')  # empty: no other sources
  for directory in (parts, os.path.join(lists, 'partial'),
                    os.path.join(root, 'cache', 'archives', 'partial')):
    os.makedirs(directory, exist_ok=True)
  sources = os.path.join(root, 'sources.list')
  line = f'deb {mirror} {suite or system_suite()} {" ".join(components)}\n'
  options = [
      '-o', f'Dir::Etc::sourcelist={sources}', '-o', f'Dir::Etc::sourceparts={parts}',
      '-o', f'Dir::State::Lists={lists}', '-o', f'Dir::Cache={os.path.join(root, "cache")}',
      '-o', 'Acquire::Languages=en', '-o', 'APT::Get::List-Cleanup=0',
      '-o', f'Acquire::Retries={retries}',
  ]
  marker = os.path.join(root, 'updated')
  current = None
  if os.path.exists(sources):
    with open(sources, encoding='utf-8') as f:
      current = f.read()
  if current != line or not os.path.exists(marker):
    with open(sources, 'w', encoding='utf-8') as f:
      f.write(line)
    if os.path.exists(marker):
      os.remove(marker)
    if update:
      _run_apt(['apt-get', *options, 'update'], what=f'apt-get update of {line.strip()!r}')
      with open(marker, 'w', encoding='utf-8') as f:
        f.write(line)
  return options


def lists_dir(apt_options: Sequence[str]) -> str:
  """The package-lists directory named by :func:`private_apt_options`' options."""
  for option in apt_options:
    if option.startswith('Dir::State::Lists='):
      return option.split('=', 1)[1]
  raise ValueError(f'apt_options: no Dir::State::Lists option in {list(apt_options)}')


def read_list_file(path: str) -> str:
  """A package list as text; apt stores them compressed (lz4, gz, xz) on some systems."""
  return _run_apt(['/usr/lib/apt/apt-helper', 'cat-file', path], what=f'reading {path}')


def missing_packages(packages: Sequence[str], *, apt_options: Sequence[str] = ()) -> list[str]:
  """`packages` and their dependencies that the system lacks, as apt resolves them.

  ``apt-get -s install`` (a simulation against the system's dpkg status,
  no root needed) lists what an installation would add; packages it would
  only upgrade are installed already and left out.
  """
  out = _run_apt(['apt-get', *apt_options, '-s', '--no-install-recommends', 'install',
                  *packages], what=f'resolving the dependencies of {list(packages)}')
  return sorted({m[1] for m in re.finditer(r'^Inst (\S+) (?!\[)', out, re.M)})


def package_depends(package: str, *, apt_options: Sequence[str] = ()) -> list[str]:
  """The packages `package` directly depends on (``apt-cache depends``), in apt's order."""
  out = _run_apt(['apt-cache', *apt_options, 'depends', package],
                 what=f'reading the dependencies of {package!r}')
  return [m[1] for m in re.finditer(r'^\s+\|?(?:Pre)?Depends: (\S+)', out, re.M)]


def _deb_of(debs_dir: str, package: str) -> str | None:
  found = sorted(glob.glob(os.path.join(debs_dir, f'{package}_*.deb')))
  return found[-1] if found else None


def download_packages(
    packages: Sequence[str],
    *,
    cache_dir: str | os.PathLike[str],
    apt_options: Sequence[str] = (),
) -> dict[str, str]:
  """``apt-get download`` of the packages not in ``cache_dir/debs`` yet.

  Args:
    packages: Debian package names.
    cache_dir: the package cache.
    apt_options: extra apt options (:func:`private_apt_options`).

  Returns:
    ``{package: .deb path}``.

  Raises:
    AptError: apt failed or a package was not downloaded.
  """
  debs_dir = os.path.join(os.fspath(cache_dir), 'debs')
  os.makedirs(debs_dir, exist_ok=True)
  missing = [p for p in packages if _deb_of(debs_dir, p) is None]
  if missing:
    _run_apt(['apt-get', *apt_options, 'download', *missing], cwd=debs_dir,
             what=f'apt-get download of {missing}')
  debs = {}
  for package in packages:
    deb = _deb_of(debs_dir, package)
    if deb is None:
      raise AptError(f'packages: {package!r} was not downloaded into {debs_dir}')
    debs[package] = deb
  return debs


def package_version(deb: str) -> str:
  """The ``Version`` field of a ``.deb``."""
  return subprocess.run(['dpkg-deb', '-f', deb, 'Version'], capture_output=True, text=True,
                        check=True).stdout.strip()


def extract_package(deb: str, *, cache_dir: str | os.PathLike[str], package: str) -> str:
  """Unpacks a ``.deb`` into ``cache_dir/extracted/<package>`` once; returns that path.

  The unpacking goes to a temporary directory that is renamed into place,
  so an interrupted extraction leaves nothing half-done.
  """
  cache_dir = os.fspath(cache_dir)
  root = os.path.join(cache_dir, 'extracted', package)
  if not os.path.isdir(root):
    os.makedirs(os.path.dirname(root), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache_dir, prefix='.extract-')
    subprocess.run(['dpkg-deb', '-x', deb, tmp], check=True)
    os.replace(tmp, root)
  return root


def fetch_packages(
    packages: Sequence[str],
    *,
    cache_dir: str | os.PathLike[str],
    apt_options: Sequence[str] = (),
) -> dict[str, tuple[str, str]]:
  """Downloads Debian packages and unpacks each into the cache, once.

  :func:`download_packages` of those whose ``.deb`` is not in
  ``cache_dir/debs`` yet (nothing is installed, no root is needed), then
  :func:`extract_package` of each into ``cache_dir/extracted/<package>``.

  Args:
    packages: Debian package names.
    cache_dir: the package cache.
    apt_options: extra apt options (:func:`private_apt_options`).

  Returns:
    ``{package: (version, extracted root directory)}``, sorted by package.

  Raises:
    AptError: apt failed or a package was not downloaded.
  """
  debs = download_packages(packages, cache_dir=cache_dir, apt_options=apt_options)
  return {package: (package_version(debs[package]),
                    extract_package(debs[package], cache_dir=cache_dir, package=package))
          for package in sorted(debs)}

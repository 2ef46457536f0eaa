"""The process-wide CPU settings: when the command restarts itself with glibc's tunables."""

import sys

import pytest

from diffseg_jax import platform


@pytest.fixture
def execs(monkeypatch):
  """Records ``os.execv`` calls instead of replacing the test process."""
  calls = []
  monkeypatch.setattr(platform.os, "execv", lambda path, argv: calls.append((path, argv)))
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv("DIFFSEG_MALLOC_TUNABLES", raising=False)
  monkeypatch.setattr(platform, "_transparent_huge_pages_mode", lambda: "madvise")
  monkeypatch.setattr(platform, "_glibc_version", lambda: (2, 36))
  return calls


KEEP_MEMORY = ("glibc.malloc.mmap_max=0:glibc.malloc.arena_max=1:"
               "glibc.malloc.trim_threshold=1099511627776")


def test_restarts_the_same_command_with_the_tunables_added(execs, monkeypatch):
  platform.reexec_with_malloc_tunables()
  assert execs == [(sys.executable, sys.orig_argv)]
  assert platform.os.environ["GLIBC_TUNABLES"] == f"glibc.malloc.hugetlb=1:{KEEP_MEMORY}"
  assert platform.huge_pages_enabled() and platform.freed_memory_kept()


def test_a_users_own_setting_is_kept(execs, monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0")
  platform.reexec_with_malloc_tunables()
  assert len(execs) == 1
  assert platform.os.environ["GLIBC_TUNABLES"] == (
      "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0:glibc.malloc.mmap_max=0:"
      "glibc.malloc.trim_threshold=1099511627776")
  assert not platform.huge_pages_enabled() and not platform.freed_memory_kept()


@pytest.mark.parametrize("setting", ["always", "never", "unknown", "glibc_2_31"])
def test_keeps_freed_memory_where_huge_pages_cannot_help(execs, monkeypatch, setting):
  if setting == "glibc_2_31":
    monkeypatch.setattr(platform, "_glibc_version", lambda: (2, 31))
  else:
    monkeypatch.setattr(platform, "_transparent_huge_pages_mode",
                        lambda: None if setting == "unknown" else setting)
  platform.reexec_with_malloc_tunables()
  assert len(execs) == 1
  assert platform.os.environ["GLIBC_TUNABLES"] == KEEP_MEMORY


@pytest.mark.parametrize("setting", ["opt_out", "already_set", "glibc_2_25", "not_glibc"])
def test_does_nothing_where_there_is_nothing_to_add(execs, monkeypatch, setting):
  if setting == "opt_out":
    monkeypatch.setenv("DIFFSEG_MALLOC_TUNABLES", "0")
  elif setting == "already_set":
    monkeypatch.setenv("GLIBC_TUNABLES", f"glibc.malloc.hugetlb=1:{KEEP_MEMORY}")
  else:
    version = (2, 25) if setting == "glibc_2_25" else ()
    monkeypatch.setattr(platform, "_glibc_version", lambda: version)
  platform.reexec_with_malloc_tunables()
  assert not execs


@pytest.mark.parametrize("text,mode", [("always [madvise] never\n", "madvise"),
                                       ("[always] madvise never\n", "always"), ("", None)])
def test_reads_the_kernels_huge_page_mode(tmp_path, monkeypatch, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  monkeypatch.setattr(platform, "_THP_MODE_FILE", path)
  assert platform._transparent_huge_pages_mode() == mode
  monkeypatch.setattr(platform, "_THP_MODE_FILE", tmp_path / "missing")
  assert platform._transparent_huge_pages_mode() is None


@pytest.mark.parametrize("confstr,version", [("glibc 2.36", (2, 36)), ("glibc 2.35.1", (2, 35)),
                                             ("musl 1.2.4", ())])
def test_reads_the_glibc_version(monkeypatch, confstr, version):
  monkeypatch.setattr(platform.os, "confstr", lambda name: confstr)
  assert platform._glibc_version() == version

"""The process-wide CPU settings: when the command restarts itself with huge pages."""

import sys

import pytest

from diffseg_jax import platform


@pytest.fixture
def execs(monkeypatch):
  """Records ``os.execv`` calls instead of replacing the test process."""
  calls = []
  monkeypatch.setattr(platform.os, "execv", lambda path, argv: calls.append((path, argv)))
  monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
  monkeypatch.delenv("DIFFSEG_HUGE_PAGES", raising=False)
  monkeypatch.setattr(platform, "_transparent_huge_pages_mode", lambda: "madvise")
  monkeypatch.setattr(platform, "_glibc_version", lambda: (2, 36))
  return calls


def test_restarts_the_same_command_with_the_tunable_added(execs, monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
  platform.reexec_with_huge_pages()
  assert execs == [(sys.executable, sys.orig_argv)]
  assert platform.os.environ["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert platform.huge_pages_enabled()


@pytest.mark.parametrize("setting", ["opt_out", "already_set", "always", "never", "old_glibc",
                                     "not_glibc"])
def test_does_nothing_where_it_cannot_help(execs, monkeypatch, setting):
  if setting == "opt_out":
    monkeypatch.setenv("DIFFSEG_HUGE_PAGES", "0")
  elif setting == "already_set":
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
  elif setting in ("always", "never"):
    monkeypatch.setattr(platform, "_transparent_huge_pages_mode", lambda: setting)
  else:
    version = (2, 31) if setting == "old_glibc" else ()
    monkeypatch.setattr(platform, "_glibc_version", lambda: version)
  platform.reexec_with_huge_pages()
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

"""``upload_file``: the command-line producer, and how it refuses bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command

from events.models import Event
from uploads.models import Upload

pytestmark = pytest.mark.django_db(transaction=True)


def test_upload_file_uploads_each_path_for_the_owner(user, tmp_path, capsys):
    first = tmp_path / "a.txt"
    first.write_text("alpha")
    second = tmp_path / "b.md"
    second.write_text("# beta")

    call_command("upload_file", str(first), str(second), "--owner", "alice")

    names = sorted(Upload.objects.filter(owner=user).values_list("original_name", flat=True))
    assert names == ["a.txt", "b.md"]
    assert Event.objects.filter(type="file.uploaded").count() == 2
    assert capsys.readouterr().out.count("upload ") == 2


@pytest.mark.parametrize(
    ("make_path", "owner", "message"),
    [
        (lambda d: d / "ok.txt", "nobody", "unknown owner 'nobody'"),
        (lambda d: d / "missing.txt", "alice", "missing.txt: no such file"),
        (lambda d: d, "alice", "is a directory"),
        (lambda d: d / "empty.txt", "alice", "empty.txt: the file is empty"),
        (lambda d: d / "big.txt", "alice", "big.txt: the file is 2049 bytes, over the limit"),
    ],
    ids=["unknown-owner", "missing-file", "directory", "empty-file", "too-large"],
)
def test_upload_file_refuses_bad_input_with_one_line_and_stores_nothing(
    user, tmp_path, settings, run_manage, make_path, owner, message
):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "big.txt").write_bytes(b"x" * 2049)
    good = tmp_path / "ok.txt"

    # A good file first: one bad path among several must store nothing at all.
    result = run_manage("upload_file", str(good), str(make_path(tmp_path)), "--owner", owner)

    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, result.stderr
    assert message in error_lines[0]
    assert not Upload.objects.exists()
    assert not Event.objects.exists()
    assert not any(Path(settings.MEDIA_ROOT).rglob("*.*"))


@pytest.fixture(autouse=True)
def _small_upload_limit(monkeypatch):
    """The child process reads UPLOAD_MAX_BYTES from its environment."""
    monkeypatch.setenv("UPLOAD_MAX_BYTES", "2048")


def test_upload_file_needs_an_owner_and_a_path(run_manage):
    result = run_manage("upload_file")

    assert result.returncode != 0
    assert "the following arguments are required" in result.stderr

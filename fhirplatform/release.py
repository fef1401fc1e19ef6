"""Which code release is running, for the audit trail: CODE_RELEASE when the deployment
sets it, else the commit of the checkout it runs from (read from .git, no subprocess)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def release_from_checkout(root: Path = ROOT) -> str:
    """The checked-out commit (12 hex digits), or "unknown" outside a git checkout."""
    git = root / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head.removeprefix("ref: ")
        loose = git / ref
        if loose.exists():
            return loose.read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha[:12]
    except OSError:
        pass
    return "unknown"

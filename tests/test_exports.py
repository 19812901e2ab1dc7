"""The public surface: __all__ sorted, complete, and importable."""

from __future__ import annotations

import chatsdk


def test_all_is_sorted_and_unique() -> None:
    assert list(chatsdk.__all__) == sorted(set(chatsdk.__all__))


def test_all_names_exist() -> None:
    for name in chatsdk.__all__:
        assert hasattr(chatsdk, name), name


def test_every_public_name_is_exported() -> None:
    public = {
        name
        for name, value in vars(chatsdk).items()
        if not name.startswith("_")
        and not isinstance(value, type(chatsdk))
        and name != "annotations"
    }
    assert public <= set(chatsdk.__all__)


def test_errors_share_one_root() -> None:
    errors = [getattr(chatsdk, n) for n in chatsdk.__all__ if n.endswith("Error")]
    assert errors and all(issubclass(e, chatsdk.ChatSDKError) for e in errors)

from __future__ import annotations

import re

from inferclub.hub import keys


def test_generated_keys_have_the_documented_format() -> None:
    pattern = re.compile(r"^ic_[0-9A-Za-z]{30}[0-9A-Za-z]{6}$")
    generated = {keys.generate() for _ in range(2000)}
    assert len(generated) == 2000
    assert all(pattern.match(k) and keys.is_well_formed(k) for k in generated)


def test_any_single_character_change_fails_the_checksum() -> None:
    key = keys.generate()
    for i in range(len(keys.PREFIX), len(key)):
        for c in "0aZ":
            if key[i] != c:
                assert not keys.is_well_formed(key[:i] + c + key[i + 1 :]), (i, c)


def test_garbage_is_not_well_formed() -> None:
    key = keys.generate()
    for bad in (
        "",
        "ic_",
        key + "x",
        key[:-1],
        "sk-" + key[3:],
        key.replace("ic_", "IC_"),
        key[:10] + "!" + key[11:],
        "ic_" + "é" * 36,
    ):
        assert not keys.is_well_formed(bad), bad


def test_hash_is_keyed_by_the_pepper() -> None:
    key = keys.generate()
    assert keys.hash_key(b"a", key) == keys.hash_key(b"a", key)
    assert keys.hash_key(b"a", key) != keys.hash_key(b"b", key)
    assert key not in keys.hash_key(b"a", key)
    assert keys.display_prefix(key) == key[:11]

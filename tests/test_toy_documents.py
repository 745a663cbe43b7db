"""The toy corpus is pinned byte for byte: its documents, its domains' and the calibration
text hash to what the original one-word-at-a-time generator wrote, so a faster generator
(or a numpy change) cannot silently change every chapter's texts."""

import hashlib

from ctxneurons import toy


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_documents_are_the_pinned_bytes():
    assert [sha(d)[:16] for d in toy.documents(5, seed=0)] == [
        "7b68b6b6a74304ab", "97ae0f825087ceec", "9f8b3d85980b753e", "617721930f5a075a", "1592f7fdf0969374"]
    assert [sha(d)[:16] for d in toy.documents(3, seed=3, min_tokens=300)] == [
        "86cbf9fa77927f63", "1fef32664c6f0a88", "dd2d37da7e5d2b7a"]
    assert sha("\x00".join(toy.documents(200, seed=0))) == "a89ad508d1370b3ab6fa2844c2556886372bd5ace38804a3922ea8e442c1e546"


def test_domain_documents_and_calibration_text_are_the_pinned_bytes():
    pinned = {
        "topics-a": ["0c8b25d2ffb56609", "bd36777da274cbde"],
        "topics-b": ["e3557e63ef23d6dc", "25ff629837ef4ad0"],
        "topics-c": ["70b5e7fe536d636c", "32812675c91b0448"],
        "terse": ["e9bf5429aa3d395f", "6026242e5ec425f3"],
    }
    assert {d: [sha(x)[:16] for x in toy.domain_documents(d, 2, seed=1)] for d in toy.DOMAINS} == pinned
    assert sha("\x00".join(toy.domain_documents("terse", 50, seed=2))) == "0e1ed8dcb48b7795c457aefba4604767a41300bea6348c07921edae7d512cdd7"
    assert sha(toy.calibration_text())[:16] == "94e25b64b232454d"

"""User-facing texts exist in English and Turkish with the same placeholders."""

import string

import pytest

from mammo.texts import TEXTS, category_text, text


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


class TestTexts:
    @pytest.mark.parametrize("key", sorted(TEXTS))
    def test_both_languages_with_same_placeholders(self, key):
        assert set(TEXTS[key]) == {"en", "tr"}
        assert _placeholders(TEXTS[key]["en"]) == _placeholders(TEXTS[key]["tr"])

    def test_turkish_category(self):
        assert category_text("suspicious", "tr") == "malignite açısından şüpheli"

    def test_unknown_key_raises(self):
        with pytest.raises(KeyError, match="no 'tr' text for key 'missing'"):
            text("missing", "tr")

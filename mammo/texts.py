"""User-facing texts in English and Turkish.

Logs stay in English; what a user reads (command-line messages, Prefect artifacts, the text
columns of reports) comes from here, in the language chosen by the ``language`` setting.
Every key exists in both languages; `tests/mammo/test_texts.py` checks that, and that both
versions take the same placeholders.
"""

from __future__ import annotations

from typing import Literal

Language = Literal["en", "tr"]

TEXTS: dict[str, dict[str, str]] = {
    "category.suspicious": {
        "en": "suspicious for malignancy",
        "tr": "malignite açısından şüpheli",
    },
    "category.not_suspicious": {
        "en": "not suspicious",
        "tr": "şüpheli değil",
    },
    "opinion.summary": {
        "en": "AI second opinion: {category} (ensemble probability {probability:.2f}, "
              "threshold {threshold:.2f}; {agreeing} of {total} models agree)",
        "tr": "Yapay zekâ ikinci görüşü: {category} (topluluk olasılığı {probability:.2f}, "
              "eşik {threshold:.2f}; {total} modelden {agreeing} tanesi hemfikir)",
    },
    "run.summary": {
        "en": "Run {run_id}: {claimed} files claimed, {scored} scored, {duplicates} "
              "duplicates, {quarantined} quarantined, {pending} still being written.",
        "tr": "Çalıştırma {run_id}: {claimed} dosya alındı, {scored} skorlandı, {duplicates} "
              "yinelenen, {quarantined} karantinaya alındı, {pending} dosya hâlâ yazılıyor.",
    },
    "run.title": {
        "en": "Second-opinion run",
        "tr": "İkinci görüş çalıştırması",
    },
    "run.quarantine_heading": {
        "en": "Quarantined inputs",
        "tr": "Karantinaya alınan girdiler",
    },
    "cli.db_ready": {
        "en": "Database ready at {url} (schema revision {revision}).",
        "tr": "Veritabanı hazır: {url} (şema sürümü {revision}).",
    },
    "cli.reporting_granted": {
        "en": "Role {role} may now read the reporting views and nothing else.",
        "tr": "{role} rolü artık yalnızca raporlama görünümlerini okuyabilir.",
    },
    "cli.models_bootstrapped": {
        "en": "Published {count} model versions; models that already had a version were "
              "left unchanged.",
        "tr": "{count} model sürümü yayımlandı; zaten sürümü olan modellere dokunulmadı.",
    },
    "cli.random_weights_warning": {
        "en": "WARNING: {model} version {version} was built with random backbone weights "
              "instead of ImageNet ones; its scores are not clinically meaningful.",
        "tr": "UYARI: {model} sürüm {version}, ImageNet yerine rastgele omurga "
              "ağırlıklarıyla oluşturuldu; skorları klinik açıdan anlamlı değildir.",
    },
    "cli.samples_copied": {
        "en": "Copied {count} CBIS-DDSM sample mammograms into {folder}.",
        "tr": "{count} CBIS-DDSM örnek mamogram {folder} klasörüne kopyalandı.",
    },
    "cli.no_results": {
        "en": "No results match.",
        "tr": "Eşleşen sonuç yok.",
    },
    "cli.server_ready": {
        "en": "Model server at {address} serves: {models}.",
        "tr": "{address} adresindeki model sunucusu şu modelleri sunuyor: {models}.",
    },
    "cli.server_not_ready": {
        "en": "Model server at {address} is not ready after {seconds:.0f} s: {error}",
        "tr": "{address} adresindeki model sunucusu {seconds:.0f} sn sonra hazır değil: {error}",
    },
    "cli.selftest_passed": {
        "en": "Pixel data self-test passed: all {count} transfer syntaxes decode.",
        "tr": "Piksel verisi öz testi başarılı: {count} aktarım sözdiziminin tümü çözülüyor.",
    },
    "cli.error": {
        "en": "Error: {error}",
        "tr": "Hata: {error}",
    },
}


def text(key: str, language: Language = "en", **values: object) -> str:
    """Return the text ``key`` in ``language`` with ``values`` filled in."""
    try:
        template = TEXTS[key][language]
    except KeyError as error:
        raise KeyError(f"no {language!r} text for key {key!r}") from error
    return template.format(**values)


def category_text(category: str, language: Language = "en") -> str:
    return text(f"category.{category}", language)

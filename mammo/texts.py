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
    "cli.untrained_warning": {
        "en": "WARNING: {model} version {version} has not been trained on mammograms; its "
              "scores are not clinically meaningful.",
        "tr": "UYARI: {model} sürüm {version} mamogramlarla eğitilmedi; skorları klinik "
              "açıdan anlamlı değildir.",
    },
    "cli.database_unreachable": {
        "en": "Cannot connect to the results database at {url}: {error}. Check "
              "MAMMO_DATABASE_URL and that the database server is running.",
        "tr": "{url} adresindeki sonuç veritabanına bağlanılamıyor: {error}. "
              "MAMMO_DATABASE_URL değerini ve veritabanı sunucusunun çalıştığını denetleyin.",
    },
    "cli.serving_hint": {
        "en": "Start the model server (`mammo serve-models` or TF Serving), check "
              "MAMMO_SERVING_ADDRESS, and use `mammo models wait` to test it.",
        "tr": "Model sunucusunu başlatın (`mammo serve-models` ya da TF Serving), "
              "MAMMO_SERVING_ADDRESS değerini denetleyin ve `mammo models wait` ile sınayın.",
    },
    "cli.invalid_setting": {
        "en": "Invalid setting {variable}: {message} (got {value}).",
        "tr": "Geçersiz ayar {variable}: {message} (verilen: {value}).",
    },
    "cli.invalid_settings": {
        "en": "Invalid settings: {message}.",
        "tr": "Geçersiz ayarlar: {message}.",
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
    "cli.labels_imported": {
        "en": "Labels from {file}: {added} added, {updated} updated, {unchanged} unchanged, "
              "{rejected} rejected; {unmatched} match no archived instance yet.",
        "tr": "{file} etiketleri: {added} eklendi, {updated} güncellendi, {unchanged} "
              "değişmedi, {rejected} reddedildi; {unmatched} tanesi henüz arşivdeki bir "
              "görüntüyle eşleşmiyor.",
    },
    "cli.labels_checked": {
        "en": "Checked {file} without writing: {valid} valid rows, {rejected} rejected.",
        "tr": "{file} yazılmadan denetlendi: {valid} geçerli satır, {rejected} reddedildi.",
    },
    "cli.label_rejected": {
        "en": "Line {line} rejected: {reason}",
        "tr": "Satır {line} reddedildi: {reason}",
    },
    "retrain.title": {
        "en": "Retraining report",
        "tr": "Yeniden eğitim raporu",
    },
    "retrain.data": {
        "en": "Run {run_id}: {training} labelled instances for training and {validation} "
              "held out for validation, split by patient.",
        "tr": "Çalıştırma {run_id}: eğitim için {training} etiketli görüntü, doğrulama "
              "için {validation} ayrılmış görüntü; ayrım hastaya göre yapıldı.",
    },
    "retrain.dry_run": {
        "en": "Dry run: no version was published and the ensemble was not changed.",
        "tr": "Deneme çalıştırması: hiçbir sürüm yayımlanmadı ve topluluk değiştirilmedi.",
    },
    "retrain.skipped": {
        "en": "Retraining skipped: {new} labels imported since the last completed run, "
              "{minimum} needed.",
        "tr": "Yeniden eğitim atlandı: son tamamlanan çalıştırmadan bu yana {new} etiket "
              "içe aktarıldı, {minimum} gerekiyor.",
    },
    "retrain.reason_not_worse": {
        "en": "candidate AUC {candidate:.3f} is at most {margin:.3f} below the served "
              "version's {current:.3f}",
        "tr": "aday modelin AUC değeri {candidate:.3f}, sunulan sürümün {current:.3f} "
              "değerinden en fazla {margin:.3f} düşük",
    },
    "retrain.reason_worse": {
        "en": "candidate AUC {candidate:.3f} is more than {margin:.3f} below the served "
              "version's {current:.3f}",
        "tr": "aday modelin AUC değeri {candidate:.3f}, sunulan sürümün {current:.3f} "
              "değerinden {margin:.3f} fazlasıyla düşük",
    },
    "retrain.decision_promoted": {
        "en": "{model}: promoted as version {version} (fine-tuned from version {base}); "
              "{reason}.",
        "tr": "{model}: sürüm {version} olarak yayımlandı (sürüm {base} üzerinden ince "
              "ayar yapıldı); {reason}.",
    },
    "retrain.decision_rejected": {
        "en": "{model}: candidate rejected, version {base} stays in service; {reason}.",
        "tr": "{model}: aday reddedildi, sürüm {base} hizmette kalıyor; {reason}.",
    },
    "retrain.decision_dry_run": {
        "en": "{model}: candidate from version {base} not published (dry run); {reason}.",
        "tr": "{model}: sürüm {base} üzerinden eğitilen aday yayımlanmadı (deneme "
              "çalıştırması); {reason}.",
    },
    "retrain.roc_curve": {
        "en": "ROC curve: `{path}`",
        "tr": "ROC eğrisi: `{path}`",
    },
    "retrain.ensemble": {
        "en": "Ensemble of {versions}: weights {weights}; threshold {threshold:.3f} for a "
              "sensitivity of {percent}% on the held-out cases; AUC {auc:.3f}.",
        "tr": "{versions} topluluğu: ağırlıklar {weights}; ayrılmış vakalarda "
              "%{percent} duyarlılık için eşik {threshold:.3f}; AUC {auc:.3f}.",
    },
    "retrain.table_description": {
        "en": "Validation metrics per model: AUC with its 95% bootstrap confidence "
              "interval, and sensitivity / specificity at a threshold.",
        "tr": "Model başına doğrulama ölçütleri: %95 bootstrap güven aralığıyla AUC, ve "
              "bir eşikte duyarlılık / özgüllük.",
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


#: Turkish headers of the result and quarantine tables that `mammo results` prints. English
#: tables keep the column names, which CSV, JSON and the reporting views use too.
TURKISH_COLUMN_LABELS = {
    "sop_instance_uid": "SOPInstanceUID",
    "study_instance_uid": "StudyInstanceUID",
    "accession_number": "Erişim no",
    "laterality": "Taraf",
    "view": "Projeksiyon",
    "views_present": "Mevcut projeksiyonlar",
    "views_missing": "Eksik projeksiyonlar",
    "breast_count": "Meme sayısı",
    "probability": "Olasılık",
    "category": "Kategori",
    "models_agreeing": "Uyuşan modeller",
    "most_suspicious_laterality": "En şüpheli taraf",
    "file_name": "Dosya adı",
    "reason_code": "Neden kodu",
    "message": "Mesaj",
}

#: Turkish headers of the per-model columns ``<model>_probability`` and ``<model>_version``.
TURKISH_MODEL_COLUMN_LABELS = {"_probability": "{model} olasılığı",
                               "_version": "{model} sürümü"}


def column_label(column: str, language: Language = "en") -> str:
    """Return the table header of a result column in ``language``."""
    if language == "en":
        return column
    if column in TURKISH_COLUMN_LABELS:
        return TURKISH_COLUMN_LABELS[column]
    for suffix, template in TURKISH_MODEL_COLUMN_LABELS.items():
        if column.endswith(suffix):
            return template.format(model=column.removesuffix(suffix))
    return column

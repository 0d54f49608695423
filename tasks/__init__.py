"""Steps of the main job: intake, DICOM reading, preprocessing, scoring, ensemble, results."""

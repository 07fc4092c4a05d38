"""Facts every part of a subject's data agrees on, defined once: the frame rate, the audio sample rate, and the
audio windows the audio network reads (ER-NeRF's)."""

FPS = 25  # every dataset is resampled to it; a frame's audio features and its image share an index
SAMPLE_RATE = 16000  # audio is resampled to it for features and lip-sync measures (the ASR models' rate)
FEATURE_ROWS = 16  # audio-feature rows per video frame (50 rows/s at 25 frames/s, with overlap): ER-NeRF's window
SMOOTH_WINDOW = 8  # neighbouring frames the audio attention net smooths over ([i-4, i+4), ER-NeRF's att=2)

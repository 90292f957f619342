"""Speech Commands v0.02, all 35 words (TFDS' own `speech_commands` is the 12-class variant)."""

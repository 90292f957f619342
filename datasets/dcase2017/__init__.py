"""DCASE 2017 task 4 (weakly labelled sound events for smart cars)."""

"""MTG-Jamendo autotagging top-50 tags, split-0."""

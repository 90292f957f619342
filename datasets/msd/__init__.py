"""Million Song Dataset, Last.fm top-50 tags, Choi's filtered split."""

# `make soundfonts`: the two Debian General MIDI banks that synth_gm's `<config>_fluidr3` and
# `<config>_musescore` render the test scores with, and the one `<config>_multibank` adds to its
# training clips (datasets/synth_gm/README.md). The Makefile
# includes this file; `make -f datasets/synth_gm/soundfonts.mk soundfonts` works on its own.
# The paths must match SOUNDFONTS in datasets/synth_gm/render.py (tests/datasets/test_synth_gm.py
# checks that they do).
SOUNDFONT_PACKAGES := fluid-soundfont-gm musescore-general-soundfont-small csound-soundfont
SOUNDFONT_FILES    := /usr/share/sounds/sf2/FluidR3_GM.sf2 \
                      /usr/share/sounds/sf3/MuseScore_General_Lite.sf3 \
                      /usr/share/sounds/sf2/sf_GMbank.sf2
# apt-get needs root: sudo unless make already runs as root.
SOUNDFONT_SUDO     := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: soundfonts
soundfonts:
	@missing=""; for f in $(SOUNDFONT_FILES); do [ -f "$$f" ] || missing="$$missing $$f"; done; \
	if [ -z "$$missing" ]; then echo "soundfonts: installed ($(SOUNDFONT_FILES))"; \
	else echo "soundfonts: missing$$missing; installing $(SOUNDFONT_PACKAGES)"; \
	  $(SOUNDFONT_SUDO) apt-get install -y $(SOUNDFONT_PACKAGES) || \
	  { echo "soundfonts: error: apt-get install $(SOUNDFONT_PACKAGES) failed" >&2; exit 1; }; fi

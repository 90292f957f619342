"""synth_gm: the embedded default dataset, rendered offline from General MIDI (see README.md).

The builder lives in `datasets.synth_gm.synth_gm` (`SynthGm`); this package stays free of imports
so that rendering workers load only numpy, pretty_midi and tinysoundfont.
"""

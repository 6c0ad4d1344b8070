"""What makes two views of a pair differ during training: the reference's waveform chain
(filters, pitch shift, time shift, room responses) or its spectrogram masks."""

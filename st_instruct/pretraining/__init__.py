"""ST-encoder pretraining without an LLM: forecast pretraining (UrbanGPT) and masked-autoencoder pretraining
(UniST, UrbanMind); :mod:`.model` holds the encoder + light head, :mod:`.run` the data, loop and saved folder."""

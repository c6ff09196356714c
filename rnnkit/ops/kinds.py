"""The kernels' numbering of the cell families (the ``kind`` argument of every op)."""

RNN_TANH, RNN_RELU, LSTM, GRU = 0, 1, 2, 3
KINDS = {"rnn_tanh": RNN_TANH, "rnn_relu": RNN_RELU, "lstm": LSTM, "gru": GRU}

# The linear-recurrence families, numbered for scan_coefficients (csrc/scan_coefficients.cpp).
MINGRU, MINLSTM, RGLRU = 0, 1, 2
SCAN_KINDS = {"mingru": MINGRU, "minlstm": MINLSTM, "rglru": RGLRU}

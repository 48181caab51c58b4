/* One held-out image of the digits model: row 0 of examples/digits/digits_test.npy, a 2.
 * 8x8 pixel intensities 0..16, row by row, as scikit-learn's load_digits gives them; the model
 * input is intensity / 16. */
#ifndef SAMPLE_DIGIT_H
#define SAMPLE_DIGIT_H

#define SAMPLE_DIGIT_LABEL 2

static const unsigned char sample_digit[64] = {
    0, 0,  7, 16, 14,  3,  0, 0,
    0, 0,  9, 14, 11, 15,  0, 0,
    0, 0,  1,  5,  0, 15,  5, 0,
    0, 0,  0,  0,  0, 16,  5, 0,
    0, 0,  0,  0,  3, 16,  4, 0,
    0, 0,  0,  1, 12, 14,  1, 0,
    0, 0,  5, 12, 16, 16, 14, 1,
    0, 0,  8, 16, 14, 10, 13, 3,
};

#endif

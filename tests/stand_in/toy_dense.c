/* Stand-in kernel file (tests only): int8 dense layer with int32 accumulation. */
#include "toy_kernels.h"

static int8_t saturate_int8(int32_t value)
{
    if (value > 127) {
        return 127;
    }
    if (value < -128) {
        return -128;
    }
    return (int8_t)value;
}

void toy_dense(const int8_t *input, int32_t *accumulators, int8_t *output)
{
    size_t j;
    size_t i;

    for (j = 0; j < TOY_OUTPUT_0_SIZE; ++j) {
        accumulators[j] = toy_dense_bias[j];
        for (i = 0; i < TOY_INPUT_0_SIZE; ++i) {
            accumulators[j] += (int32_t)toy_dense_weights[j][i] * input[i];
        }
    }

    /* Rounds half up, then shifts arithmetically (gcc, clang: >> of a negative int is arithmetic). */
    for (j = 0; j < TOY_OUTPUT_0_SIZE; ++j) {
        output[j] = saturate_int8((accumulators[j] + 32) >> 6);
    }
}

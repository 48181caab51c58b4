/* Hand-written stand-in for a generated model header (tests only), with the public API of
 * NAME.h: two int8 inputs, two int8 outputs, 0 returned on success. */
#ifndef TOY_H
#define TOY_H

#include <stdint.h>

#define TOY_INPUT_0_SIZE 32
#define TOY_INPUT_1_SIZE 32
#define TOY_OUTPUT_0_SIZE 8
#define TOY_OUTPUT_1_SIZE 32

/* output_0[j] = saturate((bias[j] + sum_i weights[j][i] * input_0[i] + 32) >> 6)
   output_1[i] = saturate(input_0[i] + input_1[i]) */
int toy_run(const int8_t *input_0, const int8_t *input_1, int8_t *output_0, int8_t *output_1);

#endif

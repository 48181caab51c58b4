/* Stand-in model (tests only) whose instruction count is known: spin_run loops
 * input_0[0..3] (little-endian uint32) times over a two-instruction loop, then copies the
 * four input bytes to output_0. */
#ifndef SPIN_H
#define SPIN_H

#include <stdint.h>

#define SPIN_INPUT_0_SIZE 4
#define SPIN_OUTPUT_0_SIZE 4

int spin_run(const int8_t *input_0, int8_t *output_0);

#endif

/* Stand-in model (tests only) that never returns. */
#ifndef HANG_H
#define HANG_H

#include <stdint.h>

int hang_run(const int8_t *input_0, int8_t *output_0);

#endif

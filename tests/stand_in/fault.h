/* Stand-in model (tests only) that crashes: fault_run executes a trap instruction (udf on Arm,
 * ebreak on RISC-V) when input_0[0] is not 0, and copies input_0[0] to output_0[0] otherwise. */
#ifndef FAULT_H
#define FAULT_H

#include <stdint.h>

int fault_run(const int8_t *input_0, int8_t *output_0);

#endif

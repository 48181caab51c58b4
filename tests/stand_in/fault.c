#include "fault.h"

int fault_run(const int8_t *input_0, int8_t *output_0)
{
    if (input_0[0] != 0) {
        __builtin_trap();
    }
    output_0[0] = input_0[0];
    return 0;
}

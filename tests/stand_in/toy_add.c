/* Stand-in kernel file (tests only): saturating int8 addition. */
#include "toy_kernels.h"

void toy_add(const int8_t *a, const int8_t *b, int8_t *output, size_t count)
{
    size_t i;

    for (i = 0; i < count; ++i) {
        int32_t sum = (int32_t)a[i] + b[i];
        output[i] = (int8_t)(sum > 127 ? 127 : (sum < -128 ? -128 : sum));
    }
}

/* Minimal Cortex-M startup for QEMU's mps2-an386 board: the vector table and a reset handler
 * that sets up .data and .bss, opens newlib's semihosting stdio (librdimon), runs main() and
 * exits QEMU with its status. A real board uses its vendor's startup file instead. Symbols
 * come from mps2-an386.ld. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

extern uint32_t __data_load[], __data_start[], __data_end[];
extern uint32_t __bss_start__[], __bss_end__[];
/* The top of RAM, declared as a function so that the vector table contains function pointers
 * only (ISO C has no conversion from object to function pointers). It is never called. */
extern void __stack_top(void);

int main(void);
void initialise_monitor_handles(void);

void Reset_Handler(void)
{
    memcpy(__data_start, __data_load, (size_t)((char *)__data_end - (char *)__data_start));
    memset(__bss_start__, 0, (size_t)((char *)__bss_end__ - (char *)__bss_start__));
    initialise_monitor_handles();
    exit(main());
}

static void Fault_Handler(void)
{
    exit(99);
}

/* Initial stack pointer, then the handlers of reset and of the four fault exceptions. */
__attribute__((section(".vectors"), used)) static void (*const vectors[7])(void) = {
    __stack_top, Reset_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
};

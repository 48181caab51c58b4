# CMake toolchain file: cross-compile for Arm Cortex-M4 with Debian's arm-none-eabi-gcc
# (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi).
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)

set(CMAKE_C_COMPILER arm-none-eabi-gcc)
# Bare metal: CMake's compiler check builds a static library instead of linking a program.
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

# Soft-float ABI with the FPU unused, as the cortex-m4 target of bonsai-mcu compiles.
set(CMAKE_C_FLAGS_INIT "-mcpu=cortex-m4 -mthumb -mfloat-abi=soft -ffunction-sections -fdata-sections")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-Wl,--gc-sections")

set(BONSAI_DEMO_CORTEX_M ON)

/*
 * bcryptprimitives.dll for Wine 8.0, which lacks it: Rust's standard library
 * (1.78 and later) imports ProcessPrng from it for its random numbers
 * (HashMap keys), so every Rust program for Windows fails to start under
 * Wine 8.0 with "bcryptprimitives.dll not found" (status c0000135). This
 * one forwards to BCryptGenRandom, which Wine has. Test machinery only:
 * built by tools/windows-tests and put in its Wine prefix, never shipped.
 */
#include <windows.h>
#include <bcrypt.h>
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (BCryptGenRandom(NULL, data, chunk, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}

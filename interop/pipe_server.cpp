// PipeServer.exe: the article's demo, as C++ programs on Windows use named
// pipes (a CNamedPipeHandle class, overlapped I/O with an event), for
// npipe's interop tests under Wine (tools/windows-tests builds it with
// x86_64-w64-mingw32-g++).
//
//   PipeServer.exe [/byte] [/name NAME] [/count N]
//       creates \\.\pipe\NAME, and for each of N clients (default 1) echoes
//       every message (or bytes) until the client closes, then disconnects
//   PipeServer.exe /client [/byte] [/name NAME] [WORD...]
//       connects (waiting for a free instance), writes each WORD, reads the
//       echo, prints it on a line; exits 0 only if every echo matched
#include <windows.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

static const DWORD PIPE_IO_ERROR = (DWORD)-1;

class CNamedPipeHandle {
public:
    CNamedPipeHandle() : m_pipe(INVALID_HANDLE_VALUE) {
        m_event = CreateEventW(NULL, TRUE, FALSE, NULL);
    }
    ~CNamedPipeHandle() {
        Close();
        CloseHandle(m_event);
    }

    // Server: CreateNamedPipe, overlapped, message or byte mode.
    bool Create(const std::wstring& name, bool message) {
        DWORD mode = message ? (PIPE_TYPE_MESSAGE | PIPE_READMODE_MESSAGE)
                             : (PIPE_TYPE_BYTE | PIPE_READMODE_BYTE);
        m_pipe = CreateNamedPipeW(name.c_str(), PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED,
                                  mode | PIPE_WAIT, PIPE_UNLIMITED_INSTANCES, 4096, 4096, 0,
                                  NULL);
        return m_pipe != INVALID_HANDLE_VALUE;
    }

    // Server: ConnectNamedPipe, overlapped, waiting on the event.
    bool WaitForClient(DWORD timeout) {
        OVERLAPPED ov = Overlapped();
        if (ConnectNamedPipe(m_pipe, &ov)) return true;
        switch (GetLastError()) {
        case ERROR_PIPE_CONNECTED: return true;
        case ERROR_IO_PENDING: return Finish(&ov, timeout) != PIPE_IO_ERROR;
        default: return false;
        }
    }

    // Client: CreateFile, WaitNamedPipe while busy, then message read mode.
    bool ConnectTo(const std::wstring& name, bool message, DWORD timeout) {
        for (;;) {
            m_pipe = CreateFileW(name.c_str(), GENERIC_READ | GENERIC_WRITE, 0, NULL,
                                 OPEN_EXISTING, FILE_FLAG_OVERLAPPED, NULL);
            if (m_pipe != INVALID_HANDLE_VALUE) break;
            if (GetLastError() != ERROR_PIPE_BUSY) return false;
            if (!WaitNamedPipeW(name.c_str(), timeout)) return false;
        }
        if (message) {
            DWORD mode = PIPE_READMODE_MESSAGE;
            return SetNamedPipeHandleState(m_pipe, &mode, NULL, NULL) != 0;
        }
        return true;
    }

    // ReadFile, overlapped: the bytes read (a message's first part if it
    // is longer than the buffer: ERROR_MORE_DATA), or PIPE_IO_ERROR.
    DWORD Read(void* buf, DWORD len, bool* more) {
        OVERLAPPED ov = Overlapped();
        DWORD got = 0;
        *more = false;
        // On an overlapped handle the count comes from the OVERLAPPED,
        // also when the read completed at once.
        if (ReadFile(m_pipe, buf, len, NULL, &ov)) {
            GetOverlappedResult(m_pipe, &ov, &got, FALSE);
            return got;
        }
        DWORD e = GetLastError();
        if (e == ERROR_MORE_DATA) {
            *more = true;
            GetOverlappedResult(m_pipe, &ov, &got, FALSE);
            return got;
        }
        if (e != ERROR_IO_PENDING) return PIPE_IO_ERROR;
        got = Finish(&ov, INFINITE);
        if (got == PIPE_IO_ERROR && GetLastError() == ERROR_MORE_DATA) {
            *more = true;
            GetOverlappedResult(m_pipe, &ov, &got, FALSE);
        }
        return got;
    }

    // WriteFile, overlapped.
    bool Write(const void* buf, DWORD len) {
        OVERLAPPED ov = Overlapped();
        DWORD put = 0;
        if (WriteFile(m_pipe, buf, len, NULL, &ov)) {
            GetOverlappedResult(m_pipe, &ov, &put, FALSE);
            return put == len;
        }
        if (GetLastError() != ERROR_IO_PENDING) return false;
        return Finish(&ov, INFINITE) == len;
    }

    void Disconnect() {
        FlushFileBuffers(m_pipe);
        DisconnectNamedPipe(m_pipe);
    }

    void Close() {
        if (m_pipe != INVALID_HANDLE_VALUE) CloseHandle(m_pipe);
        m_pipe = INVALID_HANDLE_VALUE;
    }

private:
    OVERLAPPED Overlapped() {
        OVERLAPPED ov;
        memset(&ov, 0, sizeof ov);
        ResetEvent(m_event);
        ov.hEvent = m_event;
        return ov;
    }

    DWORD Finish(OVERLAPPED* ov, DWORD timeout) {
        if (WaitForSingleObject(m_event, timeout) != WAIT_OBJECT_0) {
            CancelIo(m_pipe);
            return PIPE_IO_ERROR;
        }
        DWORD n = 0;
        return GetOverlappedResult(m_pipe, ov, &n, FALSE) ? n : PIPE_IO_ERROR;
    }

    HANDLE m_pipe;
    HANDLE m_event;
};

// One whole message (or what one read of a byte pipe gave).
static bool ReadWhole(CNamedPipeHandle& pipe, std::string* out) {
    char buf[7];  // small on purpose: long messages come in parts
    out->clear();
    for (;;) {
        bool more = false;
        DWORD n = pipe.Read(buf, sizeof buf, &more);
        if (n == PIPE_IO_ERROR) return false;
        out->append(buf, n);
        if (!more) return true;
    }
}

static int Serve(const std::wstring& name, bool message, int count) {
    for (int served = 0; served < count; served++) {
        CNamedPipeHandle pipe;
        if (!pipe.Create(name, message)) {
            fprintf(stderr, "CreateNamedPipe failed: %lu\n", GetLastError());
            return 2;
        }
        printf("ready\n");
        fflush(stdout);
        if (!pipe.WaitForClient(INFINITE)) {
            fprintf(stderr, "ConnectNamedPipe failed: %lu\n", GetLastError());
            return 3;
        }
        std::string msg;
        while (ReadWhole(pipe, &msg)) {
            if (!message && msg.empty()) break;
            if (!pipe.Write(msg.data(), (DWORD)msg.size())) break;
        }
        pipe.Disconnect();
    }
    return 0;
}

static int Client(const std::wstring& name, bool message, const std::vector<std::string>& words) {
    CNamedPipeHandle pipe;
    if (!pipe.ConnectTo(name, message, 20000)) {
        fprintf(stderr, "cannot connect: %lu\n", GetLastError());
        return 4;
    }
    int status = 0;
    for (size_t i = 0; i < words.size(); i++) {
        const std::string& w = words[i];
        if (!pipe.Write(w.data(), (DWORD)w.size())) return 5;
        std::string echo;
        while (echo.size() < w.size() || (message && echo.empty() && w.empty())) {
            std::string part;
            if (!ReadWhole(pipe, &part)) return 6;
            echo += part;
            if (message) break;
        }
        printf("%s\n", echo.c_str());
        if (echo != w) status = 7;
    }
    fflush(stdout);
    return status;
}

int main(int argc, char** argv) {
    bool client = false, message = true;
    int count = 1;
    std::string name = "npipe-interop";
    std::vector<std::string> words;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "/client") client = true;
        else if (a == "/byte") message = false;
        else if (a == "/name" && i + 1 < argc) name = argv[++i];
        else if (a == "/count" && i + 1 < argc) count = atoi(argv[++i]);
        else words.push_back(a);
    }
    std::wstring path = L"\\\\.\\pipe\\" + std::wstring(name.begin(), name.end());
    return client ? Client(path, message, words) : Serve(path, message, count);
}

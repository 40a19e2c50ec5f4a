// A tiny consumer of an installed libcluster through cluster.hpp: a head
// with one worker, one typed call. Built with pkg-config and with CMake's
// find_package(libcluster) by tests/c/package/run.sh.
#include <cluster.hpp>

#include <iostream>

int main() try {
    cluster::Cluster c;
    c.register_function("twice", [](cluster::Call &call) { return 2 * call.args_as<int>(); });
    if (!c.is_head()) {
        c.serve();
        return 0;
    }
    if (!cluster::version_compatible()) return 1;
    auto ids = c.addprocs(1);
    int v = c.remotecall_fetch_as<int>(ids.at(0), "twice", 21);
    c.shutdown(10000);
    std::cout << "consumer (C++, libcluster " << cluster::version_string() << "): " << (v == 42 ? "ok" : "FAILED")
              << "\n";
    return v == 42 ? 0 : 1;
} catch (const std::exception &e) {
    std::cerr << "consumer: " << e.what() << "\n";
    return 1;
}

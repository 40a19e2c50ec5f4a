// hello cluster (C++): start 4 workers, call a function on each, gather the
// results, and show what a remote error looks like, with the RAII wrapper.
//
// The same program is the head and the workers: addprocs relaunches this
// executable, and the relaunched copies become workers.
//
//   c++ -std=c++17 hello.cpp $(pkg-config --cflags --libs libcluster) -o hello && ./hello
#include <cluster.hpp>

#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

int main() try {
    cluster::Cluster c;

    // Handlers are plain callables; their return value is the reply.
    c.register_function("hello", [&c](cluster::Call &call) {
        return "hello " + call.args_string() + " from worker " + std::to_string(c.myid()) + " (pid " +
               std::to_string(getpid()) + ")";
    });
    c.register_function("square", [](cluster::Call &call) {
        auto x = call.args_as<std::int64_t>();
        return x * x;
    });

    if (!c.is_head()) { // a worker: serve calls until the head stops us
        c.serve();
        return 0;
    }

    std::cout << "libcluster " << cluster::version_string() << "\n";
    std::vector<std::int32_t> ids = c.addprocs(4);
    std::cout << "started " << ids.size() << " workers; " << c.nprocs() << " processes in the cluster\n";

    // Call every worker at once, then gather the results.
    std::vector<cluster::Future> futures;
    for (auto id : ids) futures.push_back(c.remotecall(id, "hello", "cluster"));
    for (auto &f : futures) std::cout << "  " << f.fetch_string(10000) << "\n";

    // Typed calls for trivially copyable values.
    std::int64_t sum = 0;
    for (auto id : ids) sum += c.remotecall_fetch_as<std::int64_t>(id, "square", std::int64_t(id));
    std::cout << "sum of squares of the worker ids: " << sum << "\n";

    // A remote error arrives as an exception naming the process.
    bool remote_error_ok = false;
    try {
        c.remotecall_fetch(ids[0], "no_such_function");
    } catch (const cluster::Error &e) {
        std::cout << "calling a missing function: " << e.what() << "\n";
        remote_error_ok = e.status() == CLUSTER_ERR_REMOTE && e.pid() == ids[0];
    }

    c.shutdown(10000);
    return remote_error_ok && sum == 4 + 9 + 16 + 25 ? 0 : 1;
} catch (const cluster::Error &e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
}

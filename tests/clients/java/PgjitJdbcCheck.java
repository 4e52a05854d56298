import java.io.StringReader;
import java.io.StringWriter;
import java.math.BigDecimal;
import java.sql.Array;
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Timestamp;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;

import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.copy.CopyManager;
import org.postgresql.largeobject.LargeObjectManager;

/**
 * pgJDBC through the pgjit gateway.
 *
 * <p>Usage: {@code java -cp JAR:BUILD PgjitJdbcCheck JDBC_URL USER PASSWORD [TABLE]}.
 * TABLE, if given, exists with columns (id int primary key, name text) and is empty; otherwise
 * the program creates (and drops) its own. Prints {@code OK <n checks>} and exits 0, or prints
 * {@code FAIL <reason>} and exits 1. tests/clients/test_jdbc.py also checks TABLE afterwards.
 */
public final class PgjitJdbcCheck {
    private static int checks = 0;

    private static final class CheckFailed extends RuntimeException {
        CheckFailed(String message) {
            super(message);
        }
    }

    private static void check(boolean ok, String what) {
        if (!ok) {
            throw new CheckFailed(what);
        }
        checks++;
    }

    private static void checkEq(Object expected, Object actual, String what) {
        boolean ok = expected == null ? actual == null : expected.equals(actual);
        check(ok, what + ": expected <" + expected + "> but got <" + actual + ">");
    }

    private interface SqlAction {
        void run() throws SQLException;
    }

    private static SQLException expectSqlException(SqlAction action, String what) {
        try {
            action.run();
        } catch (SQLException e) {
            return e;
        }
        throw new CheckFailed(what + ": expected an SQLException, none was thrown");
    }

    private static long scalarLong(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            check(rs.next(), "a row from " + sql);
            return rs.getLong(1);
        }
    }

    public static void main(String[] args) {
        if (args.length < 3) {
            System.out.println("FAIL usage: PgjitJdbcCheck JDBC_URL USER PASSWORD [TABLE]");
            System.exit(1);
        }
        // Bound the whole run in time.
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep(90_000);
                System.out.println("FAIL timed out after 90 s");
                System.out.flush();
                Runtime.getRuntime().halt(1);
            } catch (InterruptedException ignored) {
                // finished in time
            }
        });
        watchdog.setDaemon(true);
        watchdog.start();
        try {
            run(args[0], args[1], args[2], args.length > 3 ? args[3] : null);
            System.out.println("OK " + checks);
            System.exit(0);
        } catch (Throwable e) {
            StringWriter sw = new StringWriter();
            e.printStackTrace(new java.io.PrintWriter(sw));
            String reason = e instanceof SQLException
                    ? e + " (SQLState " + ((SQLException) e).getSQLState() + ")"
                    : e.toString();
            System.out.println("FAIL after " + checks + " checks: " + reason);
            System.err.println(sw);
            System.exit(1);
        }
    }

    private static void run(String url, String user, String password, String givenTable) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        props.setProperty("connectTimeout", "10");
        props.setProperty("ApplicationName", "pgjit-jdbc-check");
        try (Connection conn = DriverManager.getConnection(url, props)) {
            String table = givenTable;
            if (table == null) {
                table = "jdbc_" + Long.toHexString(System.nanoTime());
                try (Statement st = conn.createStatement()) {
                    st.execute("create table " + table + " (id int primary key, name text)");
                }
            }
            try {
                basics(conn);
                preparedStatements(conn);
                types(conn);
                batches(conn, table);
                metadata(conn, table);
                transactions(conn, table);
                copy(conn, table);
                fetchSize(conn);
                check(conn.isValid(5), "isValid() (an empty query)");
                errors(conn);
                cancel(conn);
                queryTimeout(conn);
                fastpathRefused(conn);
            } finally {
                if (givenTable == null) {
                    conn.setAutoCommit(true);
                    try (Statement st = conn.createStatement()) {
                        st.execute("drop table if exists " + table);
                    }
                }
            }
        }
    }

    private static void basics(Connection conn) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("select current_user, current_database()")) {
            check(rs.next(), "a row for current_user");
            checkEq("app", rs.getString(1), "current_user");
            checkEq("appdb", rs.getString(2), "current_database()");
        }
        check(scalarLong(conn, "select count(*) from public.customers") > 0, "customers has rows");
        checkEq("pgjit-jdbc-check", conn.getClientInfo("ApplicationName"), "ApplicationName");
    }

    private static void preparedStatements(Connection conn) throws SQLException {
        String sql = "select ?::int * 2, ?::text || '!' /* pgjit-jdbc-prep */";
        try (PreparedStatement ps = conn.prepareStatement(sql)) {
            for (int i = 0; i < 10; i++) {
                ps.setInt(1, i);
                ps.setString(2, "v" + i);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "a row from the prepared statement");
                    checkEq(2 * i, rs.getInt(1), "prepared result " + i);
                    checkEq("v" + i + "!", rs.getString(2), "prepared text " + i);
                    check(!rs.next(), "exactly one row");
                }
            }
            // After prepareThreshold (5) executions pgJDBC uses a named server-side statement.
            check(ps.unwrap(PGStatement.class).isUseServerPrepare(), "pgJDBC switched to a server-side prepared statement");
        }
        try (PreparedStatement q = conn.prepareStatement(
                "select count(*) from pg_prepared_statements where statement like ? and not from_sql")) {
            q.setString(1, "%pgjit-jdbc-prep%");
            try (ResultSet rs = q.executeQuery()) {
                check(rs.next(), "a row from pg_prepared_statements");
                check(rs.getLong(1) >= 1, "the named statement exists on the server (" + rs.getLong(1) + ")");
            }
        }
    }

    private static void types(Connection conn) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(
                "select ?::numeric, ?::timestamp, ?::bytea, array[1, 2, 3]::int[], '{\"k\": 1}'::jsonb, null::text, ?::bigint")) {
            ps.setBigDecimal(1, new BigDecimal("12345678901234567890.123456789"));
            ps.setTimestamp(2, Timestamp.valueOf("2024-02-29 12:34:56.789"));
            ps.setBytes(3, new byte[] {0, 1, (byte) 0xfe, (byte) 0xff});
            ps.setLong(4, Long.MIN_VALUE);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "a row of typed values");
                checkEq(new BigDecimal("12345678901234567890.123456789"), rs.getBigDecimal(1), "numeric");
                checkEq(Timestamp.valueOf("2024-02-29 12:34:56.789"), rs.getTimestamp(2), "timestamp");
                check(java.util.Arrays.equals(new byte[] {0, 1, (byte) 0xfe, (byte) 0xff}, rs.getBytes(3)), "bytea");
                Array arr = rs.getArray(4);
                Integer[] ints = (Integer[]) arr.getArray();
                check(java.util.Arrays.equals(new Integer[] {1, 2, 3}, ints), "int[]");
                checkEq("{\"k\": 1}", rs.getString(5), "jsonb text");
                check(rs.getString(6) == null && rs.wasNull(), "null");
                checkEq(Long.MIN_VALUE, rs.getLong(7), "bigint");
            }
        }
    }

    private static void batches(Connection conn, String table) throws SQLException {
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement("insert into " + table + " (id, name) values (?, ?)")) {
            for (int i = 1; i <= 200; i++) {
                ps.setInt(1, i);
                ps.setString(2, "batch " + i);
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            checkEq(200, counts.length, "batch update counts");
            for (int c : counts) {
                check(c == 1 || c == Statement.SUCCESS_NO_INFO, "batch update count " + c);
            }
        }
        conn.commit();
        checkEq(200L, scalarLong(conn, "select count(*) from " + table), "rows after the batch");
        conn.commit();

        // A batch that fails in the middle: nothing of it is kept after rollback.
        try (PreparedStatement ps = conn.prepareStatement("insert into " + table + " (id, name) values (?, ?)")) {
            for (int i = 0; i < 20; i++) {
                ps.setInt(1, i == 10 ? 5 : 1000 + i); // id 5 already exists
                ps.setString(2, "bad batch");
                ps.addBatch();
            }
            SQLException e = expectSqlException(ps::executeBatch, "a batch with a duplicate key");
            check(e instanceof BatchUpdateException, "BatchUpdateException, got " + e.getClass().getName());
            checkEq("23505", e.getSQLState(), "SQLState of the failed batch");
        }
        conn.rollback();
        checkEq(200L, scalarLong(conn, "select count(*) from " + table), "rows after the failed batch");
        conn.commit();
        conn.setAutoCommit(true);
    }

    private static void metadata(Connection conn, String table) throws SQLException {
        DatabaseMetaData md = conn.getMetaData();
        check(md.getDatabaseProductName().equals("PostgreSQL"), "product name");
        check(md.getDatabaseMajorVersion() >= 12, "server major version");
        try (ResultSet rs = md.getTables(null, "public", "customers", new String[] {"TABLE"})) {
            check(rs.next(), "getTables finds public.customers");
            checkEq("customers", rs.getString("TABLE_NAME"), "TABLE_NAME");
            checkEq("TABLE", rs.getString("TABLE_TYPE"), "TABLE_TYPE");
            check(!rs.next(), "only one customers table");
        }
        try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
            List<String> names = new ArrayList<>();
            while (rs.next() && names.size() < 10_000) {
                names.add(rs.getString("TABLE_NAME"));
            }
            check(names.contains("customers") && names.contains("orders") && names.contains(table), "getTables lists " + names);
        }
        try (ResultSet rs = md.getColumns(null, "public", "customers", null)) {
            List<String> cols = new ArrayList<>();
            while (rs.next() && cols.size() < 1000) {
                cols.add(rs.getString("COLUMN_NAME"));
            }
            check(cols.contains("id") && cols.contains("name") && cols.contains("email"), "getColumns of customers: " + cols);
        }
        try (ResultSet rs = md.getColumns(null, "public", table, null)) {
            check(rs.next(), "first column of " + table);
            checkEq("id", rs.getString("COLUMN_NAME"), "first column name");
            checkEq("int4", rs.getString("TYPE_NAME"), "first column type");
            check(rs.next(), "second column of " + table);
            checkEq("name", rs.getString("COLUMN_NAME"), "second column name");
            checkEq("text", rs.getString("TYPE_NAME"), "second column type");
            check(!rs.next(), "two columns");
        }
        for (String t : new String[] {"customers", table}) {
            try (ResultSet rs = md.getPrimaryKeys(null, "public", t)) {
                check(rs.next(), "a primary key for " + t);
                checkEq("id", rs.getString("COLUMN_NAME"), "primary key column of " + t);
                check(!rs.next(), "one primary key column for " + t);
            }
        }
        try (ResultSet rs = md.getImportedKeys(null, "public", "orders")) {
            check(rs.next(), "orders has a foreign key");
            checkEq("customers", rs.getString("PKTABLE_NAME"), "orders references customers");
        }
    }

    private static void transactions(Connection conn, String table) throws SQLException {
        conn.setAutoCommit(false);
        try (Statement st = conn.createStatement()) {
            st.executeUpdate("insert into " + table + " (id, name) values (10001, 'rolled back')");
            conn.rollback();
            checkEq(0L, scalarLong(conn, "select count(*) from " + table + " where id = 10001"), "rollback undid the insert");
            st.executeUpdate("insert into " + table + " (id, name) values (10002, 'kept')");
            Savepoint sp = conn.setSavepoint("sp1");
            st.executeUpdate("insert into " + table + " (id, name) values (10003, 'to savepoint')");
            conn.rollback(sp);
            // An error aborts the transaction until rollback.
            SQLException e = expectSqlException(() -> st.execute("select 1/0"), "division by zero");
            checkEq("22012", e.getSQLState(), "SQLState of division by zero");
            e = expectSqlException(() -> st.execute("select 1"), "statement in an aborted transaction");
            checkEq("25P02", e.getSQLState(), "SQLState in an aborted transaction");
            conn.rollback();
            st.executeUpdate("insert into " + table + " (id, name) values (10002, 'kept')");
            sp = conn.setSavepoint();
            st.executeUpdate("insert into " + table + " (id, name) values (10003, 'to savepoint')");
            conn.rollback(sp);
            conn.commit();
        }
        conn.setAutoCommit(true);
        checkEq(1L, scalarLong(conn, "select count(*) from " + table + " where id between 10001 and 10003"), "rows after the transactions");
    }

    private static void copy(Connection conn, String table) throws Exception {
        CopyManager cm = conn.unwrap(PGConnection.class).getCopyAPI();
        StringBuilder data = new StringBuilder();
        for (int i = 20000; i < 21000; i++) {
            data.append(i).append('\t').append("copy ").append(i).append(" \u00fc\n");
        }
        long in = cm.copyIn("COPY " + table + " (id, name) FROM STDIN", new StringReader(data.toString()));
        checkEq(1000L, in, "rows copied in");
        StringWriter out = new StringWriter();
        long outRows = cm.copyOut("COPY (select id, name from " + table + " where id >= 20000 order by id) TO STDOUT", out);
        checkEq(1000L, outRows, "rows copied out");
        checkEq(data.toString(), out.toString(), "COPY out text equals what was copied in");
        // A big row out.
        StringWriter big = new StringWriter();
        cm.copyOut("COPY (select repeat('j', 900000)) TO STDOUT", big);
        checkEq(900001, big.toString().length(), "big COPY row length");
        // Bad data fails with the server's error, and the connection goes on.
        SQLException e = expectSqlException(
                () -> {
                    try {
                        cm.copyIn("COPY " + table + " (id, name) FROM STDIN", new StringReader("x\ty\n"));
                    } catch (java.io.IOException io) {
                        throw new SQLException(io);
                    }
                },
                "COPY of bad data");
        checkEq("22P02", e.getSQLState(), "SQLState of a bad COPY row");
        checkEq(1L, scalarLong(conn, "select 1"), "connection usable after a failed COPY");
    }

    private static void fetchSize(Connection conn) throws SQLException {
        // With autocommit off and a fetch size, pgJDBC reads through a portal in chunks.
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement("select i from generate_series(1, 5000) i")) {
            ps.setFetchSize(100);
            long sum = 0;
            int n = 0;
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next() && n < 10_000) {
                    sum += rs.getInt(1);
                    n++;
                }
            }
            checkEq(5000, n, "rows through a portal");
            checkEq(5000L * 5001 / 2, sum, "sum through a portal");
        }
        conn.commit();
        conn.setAutoCommit(true);
    }

    private static void errors(Connection conn) throws SQLException {
        try (Statement st = conn.createStatement()) {
            SQLException e = expectSqlException(() -> st.executeQuery("select * from pgjit_no_such_table"), "undefined table");
            checkEq("42P01", e.getSQLState(), "SQLState of an undefined table");
            check(e.getMessage().contains("relation \"pgjit_no_such_table\" does not exist"), "message: " + e.getMessage());
            e = expectSqlException(() -> st.executeQuery("selec 1"), "syntax error");
            checkEq("42601", e.getSQLState(), "SQLState of a syntax error");
        }
        try (PreparedStatement ps = conn.prepareStatement("select 10 / ?")) {
            ps.setInt(1, 0);
            SQLException e = expectSqlException(ps::executeQuery, "division by zero (extended protocol)");
            checkEq("22012", e.getSQLState(), "SQLState of division by zero");
        }
        checkEq(1L, scalarLong(conn, "select 1"), "connection usable after errors");
    }

    private static void cancel(Connection conn) throws Exception {
        try (Statement st = conn.createStatement()) {
            AtomicLong cancelledAt = new AtomicLong();
            Thread canceller = new Thread(() -> {
                try {
                    Thread.sleep(1000);
                    cancelledAt.set(System.nanoTime());
                    st.cancel();
                } catch (Exception ignored) {
                    // reported below through the missing cancellation
                }
            });
            canceller.setDaemon(true);
            canceller.start();
            SQLException e = expectSqlException(() -> st.execute("select pg_sleep(30)"), "a cancelled pg_sleep");
            long done = System.nanoTime();
            canceller.join(10_000);
            checkEq("57014", e.getSQLState(), "SQLState of a cancelled statement (" + e.getMessage() + ")");
            check(cancelledAt.get() != 0, "cancel() was called");
            long ms = (done - cancelledAt.get()) / 1_000_000;
            check(ms < 2000, "statement ended within 2 s of cancel() (took " + ms + " ms)");
        }
        checkEq(1L, scalarLong(conn, "select 1"), "connection usable after a cancel");
    }

    private static void queryTimeout(Connection conn) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement("select pg_sleep(?)")) {
            ps.setQueryTimeout(1); // pgJDBC sends a CancelRequest after 1 s
            ps.setInt(1, 30);
            long start = System.nanoTime();
            SQLException e = expectSqlException(ps::executeQuery, "a timed-out pg_sleep");
            long ms = (System.nanoTime() - start) / 1_000_000;
            checkEq("57014", e.getSQLState(), "SQLState of a timed-out statement");
            check(ms < 3000, "statement ended within 3 s with a 1 s timeout (took " + ms + " ms)");
        }
        checkEq(2L, scalarLong(conn, "select 2"), "connection usable after a query timeout");
    }

    private static void fastpathRefused(Connection conn) throws SQLException {
        // The large-object API uses the FunctionCall (fastpath) message, which
        // pgjit refuses with 0A000; the refusal must be a clean error.
        conn.setAutoCommit(false);
        LargeObjectManager lom = conn.unwrap(PGConnection.class).getLargeObjectAPI();
        SQLException e = expectSqlException(() -> lom.createLO(LargeObjectManager.READWRITE), "a fastpath call");
        checkEq("0A000", e.getSQLState(), "SQLState of a refused FunctionCall (" + e.getMessage() + ")");
        check(e.getMessage().contains("FunctionCall"), "the refusal names FunctionCall: " + e.getMessage());
        conn.rollback();
        conn.setAutoCommit(true);
        checkEq(3L, scalarLong(conn, "select 3"), "connection usable after a refused FunctionCall");
    }
}

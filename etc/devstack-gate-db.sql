-- The MySQL/MariaDB database and user of a devstack-gate fleet:
--   mysql -u root < etc/devstack-gate-db.sql
-- Put a real password in place of change-me first; the slaves then give it as
-- $DEVSTACK_GATE_DB_PASSWORD or in a MySQL option file, never in the URL.
-- The first stage that writes (launch, the image build, reap) creates the tables.
CREATE DATABASE IF NOT EXISTS devstack_gate CHARACTER SET utf8mb4;
CREATE USER IF NOT EXISTS 'devstack'@'%' IDENTIFIED BY 'change-me';
GRANT ALL PRIVILEGES ON devstack_gate.* TO 'devstack'@'%';
